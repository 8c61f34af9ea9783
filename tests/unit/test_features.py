import numpy as np
import pandas as pd

from personaops import features as F

AS_OF = pd.Timestamp("2026-02-01", tz="UTC")


def _events():
    return pd.DataFrame(
        {
            "person_id": ["a", "a", "a", "b"],
            "event_type": ["login", "api_call", "api_call", "login"],
            "session_id": ["s1", "s1", "s2", "s3"],
            "event_time": pd.to_datetime(["2026-01-01", "2026-01-01", "2026-01-21", "2026-01-30"], utc=True),
        }
    )


def test_behaviour_counts_shares_and_recency():
    table = F.behaviour_features(_events(), AS_OF).set_index("person_id")
    assert table.loc["a", "n_events"] == 3 and table.loc["a", "n_sessions"] == 2 and table.loc["a", "active_days"] == 2
    assert np.isclose(table.loc["a", "share_api_call"], 2 / 3) and np.isclose(table.loc["b", "share_login"], 1.0)
    assert np.isclose(table.loc["a", "days_since_last_event"], 11.0)
    assert (table["event_timestamp"] == AS_OF).all()


def test_model_input_frame_fills_counts_but_not_shares():
    tables = {"person_behaviour": F.behaviour_features(_events(), AS_OF)}
    frame = F.model_input_frame(tables, pd.Index(["a", "b", "c"]))
    assert frame.loc["c", "n_events"] == 0  # absent from the count table: zero events
    assert np.isnan(frame.loc["c", "share_login"])  # unknown mix stays unknown for the model to impute


def test_labels_take_any_positive_and_campaign_conversion():
    crm = pd.DataFrame({"person_id": ["a", "b"], "label__churned": [1.0, 0.0], "_row_number": [1, 2]})
    exposures = pd.DataFrame({"person_id": ["a", "b", "b"], "converted": [0.0, 1.0, 0.0]})
    labels = F.label_table({"crm": crm}, exposures, AS_OF).set_index("person_id")
    assert labels.loc["a", "churned"] == 1 and labels.loc["b", "converted"] == 1 and labels.loc["a", "converted"] == 0
    campaign = F.campaign_features(exposures, AS_OF).set_index("person_id")
    assert campaign.loc["b", "n_exposures"] == 2 and campaign.loc["b", "conversion_rate"] == 0.5


def test_event_type_columns_are_safe_names():
    assert F.event_type_column("Page View/Mobile") == "share_page_view_mobile"


def test_crm_attributes_become_numeric_model_inputs():
    crm = pd.DataFrame(
        {"person_id": ["a", "b", "c"], "_row_number": [1, 2, 3], "cat__plan": ["pro", "free", None],
         "num__balance": [10.0, 20.0, None], "event_time": pd.to_datetime(["2025-02-01"] * 3, utc=True)}
    )  # fmt: skip
    tables = {"person_profile": F.profile_features(crm, AS_OF)}
    frame = F.model_input_frame(tables, pd.Index(["a", "b", "c", "d"]))
    assert frame.loc["a", "plan__pro"] == 1.0 and frame.loc["b", "plan__pro"] == 0.0
    assert np.isnan(frame.loc["c", "plan__pro"]) and np.isnan(frame.loc["d", "plan__free"])
    assert frame.loc["b", "balance"] == 20.0 and np.isclose(frame.loc["a", "tenure_days"], 365.0)


def test_feature_tables_from_the_projected_lake_equal_those_from_every_column(tmp_path):
    """The features stage reads only LAKE_COLUMNS/LAKE_PREFIXES from the lake: every table, the
    texts and the sensitive table come out the same as from the full rows (generated sources)."""
    from personaops.config import IngestConfig
    from personaops.generate import generate
    from personaops.ingest import ingest_sources, read_lake
    from personaops.sources import load_sources
    from personaops.workspace import Workspace

    generate(120, 3, tmp_path / "data")
    ws = Workspace(tmp_path / "ws")
    specs = load_sources(tmp_path / "data" / "sources.yaml")
    reports = ingest_sources(specs, ws, IngestConfig(), "r1")
    kinds = {s.name: s.kind for s in specs}

    def frames(**projection):
        out = {}
        for r in reports:
            frame = read_lake(ws, r.source, r.batch_ids, **projection)
            frame["source"] = r.source
            frame["person_id"] = "P" + (frame["source_key"].map(hash) % 40).astype(str)  # any stable person map
            out[r.source] = frame
        return out

    def tables(fr):
        of_kind = lambda kind: pd.concat([f for s, f in fr.items() if kinds[s] == kind], ignore_index=True)  # noqa: E731
        return {
            "behaviour": F.behaviour_features(of_kind("events"), AS_OF), "support": F.support_features(of_kind("tickets"), AS_OF),
            "survey": F.survey_features(of_kind("surveys"), AS_OF), "campaign": F.campaign_features(of_kind("campaigns"), AS_OF),
            "profile": F.profile_features(of_kind("crm"), AS_OF), "labels": F.label_table(fr, of_kind("campaigns"), AS_OF),
            "texts": F.person_texts(fr), "sensitive": F.sensitive_table(fr),
        }  # fmt: skip

    full, projected = frames(), frames(columns=list(F.LAKE_COLUMNS), prefixes=F.LAKE_PREFIXES)
    assert set(projected["crm"].columns) < set(full["crm"].columns)  # identifiers and lineage are left out
    expected = tables(full)
    for name, table in tables(projected).items():
        assert len(table) > 0, name
        pd.testing.assert_frame_equal(table, expected[name], check_exact=True, obj=name)


def test_behaviour_of_some_persons_with_the_population_types_equals_their_rows_of_the_whole_table():
    import numpy as np

    from personaops.features import behaviour_features

    rng = np.random.default_rng(3)
    n = 3000
    events = pd.DataFrame({
        "person_id": rng.choice([f"p{i:03d}" for i in range(200)], n),
        "event_time": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 10**7, n), unit="s"),
        "event_type": rng.choice(["view", "click", "buy", "rare"], n, p=[0.5, 0.3, 0.19, 0.01]),
        "session_id": np.where(rng.random(n) < 0.2, None, rng.choice([f"s{i}" for i in range(700)], n)).astype(object),
    })  # fmt: skip
    as_of = events["event_time"].max()
    whole = behaviour_features(events, as_of).set_index("person_id")
    some = events[events["person_id"].isin(["p001", "p002", "p003"])]
    part = behaviour_features(some, as_of, types=sorted(events["event_type"].unique())).set_index("person_id")
    assert list(part.columns) == list(whole.columns)  # every population type has its column, even one these persons lack
    pd.testing.assert_frame_equal(part, whole.loc[part.index])


def test_sensitive_table_takes_each_attributes_last_value_as_the_transposed_groupby_did():
    """sensitive_table combines the same attribute from several sources column by column; the
    result equals the earlier `out.T.groupby(level=0).last().T` (sorted names, the last source's
    value where it has one, object columns when types are mixed), also with missing values."""
    rng = np.random.default_rng(3)
    persons = [f"P{i}" for i in range(40)]

    def frame(n, seed):
        r = np.random.default_rng(seed)
        return pd.DataFrame({
            "person_id": r.choice(persons, n), "_row_number": r.permutation(n),
            "sensitive__gender": r.choice(["f", "m", None], n), "sensitive__age_band": r.choice(["18-24", "25-34", None], n),
        })  # fmt: skip

    crm = frame(60, 1)
    tickets = frame(30, 2).drop(columns=["sensitive__age_band"]).assign(sensitive__region=rng.choice(["n", "s", None], 30))
    score = frame(20, 4)[["person_id", "_row_number"]].assign(sensitive__score=rng.choice([1.0, np.nan], 20))
    frames = {"crm": crm, "tickets": tickets, "surveys": score}
    got = F.sensitive_table(frames)
    parts = []
    for f in frames.values():
        cols = [c for c in f.columns if c.startswith("sensitive__")]
        part = f.sort_values("_row_number").groupby("person_id")[cols].last()
        part.columns = [c[len("sensitive__") :] for c in cols]
        parts.append(part)
    expected = pd.concat(parts, axis=1).T.groupby(level=0).last().T.rename_axis("person_id").reset_index()
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert list(got.columns) == ["person_id", "age_band", "gender", "region", "score"]
    # one source: the column keeps its type
    only = F.sensitive_table({"surveys": score})
    assert only["score"].dtype == np.float64


def test_full_tables_with_streamed_events_equal_the_whole_frame_tables(tmp_path, monkeypatch):
    """`full_tables` folds the event rows batch by batch into per-person aggregates (persons found
    through record-key hashes) and reads the other sources whole: every table, the texts, the
    sensitive table and the incremental state equal the whole-frame computation the features stage
    did, also with missing sessions, unmapped records and many small batches."""
    import types

    import pyarrow as pa
    import pyarrow.parquet as pq

    from personaops.config import IngestConfig
    from personaops.generate import generate
    from personaops.ingest import ingest_sources, read_lake
    from personaops.sources import load_sources
    from personaops.workspace import Workspace

    generate(150, 4, tmp_path / "data")
    ws = Workspace(tmp_path / "ws")
    specs = load_sources(tmp_path / "data" / "sources.yaml")
    reports = ingest_sources(specs, ws, IngestConfig(), "r1")
    kinds = {s.name: s.kind for s in specs}
    batches = {r.source: r.batch_ids for r in reports}
    rng = np.random.default_rng(8)
    for b in batches["events"]:  # a fifth of the sessions missing: the day stands in for them
        path = ws.lake / "events" / f"batch={b}" / "part-0.parquet"
        table = pq.read_table(path)
        sessions = table.column("session_id").to_numpy(zero_copy_only=False).astype(object)
        sessions[rng.random(len(sessions)) < 0.2] = None
        pq.write_table(table.set_column(table.schema.get_field_index("session_id"), "session_id", pa.array(sessions, pa.string())), path)
    parts = []
    for r in reports:
        keys = read_lake(ws, r.source, r.batch_ids, ["source_key"])["source_key"]
        keys = keys[rng.random(len(keys)) < 0.97]  # some records of no person: left out, as the inner merge leaves them
        parts.append(pd.DataFrame({"source": r.source, "source_key": keys, "person_id": "P" + (keys.map(hash) % 60).astype(str)}))
    record_person = pd.concat(parts, ignore_index=True)
    ws.identity.mkdir(parents=True, exist_ok=True)
    record_person.to_parquet(ws.identity / "record_person.parquet", index=False)

    frames = {}
    for source, ids in batches.items():
        frame = read_lake(ws, source, ids, list(F.LAKE_COLUMNS), F.LAKE_PREFIXES)
        frame["source"] = source
        frames[source] = F._with_person(frame, record_person, source)
    as_of = max(f["event_time"].max() for f in frames.values() if "event_time" in f.columns)
    of_kind = lambda kind: pd.concat([f for s, f in frames.items() if kinds[s] == kind], ignore_index=True)  # noqa: E731
    expected = {
        "person_behaviour": F.behaviour_features(of_kind("events"), as_of), "person_support": F.support_features(of_kind("tickets"), as_of),
        "person_survey": F.survey_features(of_kind("surveys"), as_of), "person_campaign": F.campaign_features(of_kind("campaigns"), as_of),
        "person_profile": F.profile_features(of_kind("crm"), as_of), "person_labels": F.label_table(frames, of_kind("campaigns"), as_of),
    }  # fmt: skip

    monkeypatch.setattr(F, "STREAM_BATCH_ROWS", 700)  # many batches per lake file
    got_as_of, tables, texts, sensitive, update = F.full_tables(ws, batches, kinds)
    assert isinstance(update["events"], F.EventSummary)  # the events were streamed, not read whole
    assert got_as_of == as_of
    assert list(tables) == list(expected)
    for name, table in tables.items():
        assert len(table) > 0, name
        pd.testing.assert_frame_equal(table, expected[name], check_exact=True, obj=name)
    pd.testing.assert_frame_equal(texts, F.person_texts(frames), check_exact=True)
    pd.testing.assert_frame_equal(sensitive, F.sensitive_table(frames), check_exact=True)
    mine, theirs = types.SimpleNamespace(features=tmp_path / "a"), types.SimpleNamespace(features=tmp_path / "b")
    F.save_incremental_state(mine, "fp", batches, kinds, as_of, update["events"], update["tickets"])
    F.save_incremental_state(theirs, "fp", batches, kinds, as_of, of_kind("events"), of_kind("tickets"))
    assert (tmp_path / "a" / F.INCREMENTAL_STATE / "state.json").read_text() == (tmp_path / "b" / F.INCREMENTAL_STATE / "state.json").read_text()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / F.INCREMENTAL_STATE / "times.parquet"), pd.read_parquet(tmp_path / "b" / F.INCREMENTAL_STATE / "times.parquet"))
