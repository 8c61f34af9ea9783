"""Per-person feature tables computed from the lake (pure functions on frames).

Every table has `person_id`, `event_timestamp` (the data's as-of time: the latest accepted
source timestamp, so re-runs on the same inputs write identical tables) and `created`. They are
the offline sources of the Feast feature views in feature_repo/ (entity `person`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

# Model inputs come from these views; campaign outcomes, labels and sensitive attributes never do.
MODEL_INPUT_VIEWS = ("person_behaviour", "person_support", "person_survey", "person_profile")
MAX_EVENT_TYPES = 30
MAX_CATEGORIES = 12  # one-hot columns per categorical attribute (the most frequent values)
MIN_CATEGORY_SHARE = 0.01  # rarer values get no column of their own
# The lake columns the feature tables, texts and sensitive table are computed from (identifiers
# and the other lineage columns are not read: at 100k people they are most of the lake's memory).
LAKE_COLUMNS = ("source_key", "event_time", "_row_number", "text", "event_type", "session_id", "score", "converted", "campaign")
LAKE_PREFIXES = ("cat__", "num__", "label__", "sensitive__")


def event_type_column(event_type: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", str(event_type).lower()).strip("_") or "blank"
    return f"share_{slug}"[:60]


def _empty(*features: str) -> pd.DataFrame:
    """A typed table with no rows (Feast infers field types from the columns' types)."""
    return pd.DataFrame({"person_id": pd.Series(dtype="string"), **{f: pd.Series(dtype="float64") for f in features}})


def _with_person(frame: pd.DataFrame, record_person: pd.DataFrame, source: str) -> pd.DataFrame:
    ids = record_person[record_person["source"] == source][["source_key", "person_id"]]
    return frame.merge(ids, on="source_key", how="inner")


def _stamp(table: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    table = table.reset_index() if "person_id" not in table.columns else table
    table["event_timestamp"] = as_of
    table["created"] = as_of
    return table.reset_index(drop=True)


def behaviour_features(events: pd.DataFrame, as_of: pd.Timestamp, types: list[str] | None = None) -> pd.DataFrame:
    """Activity and event-type mix per person (counts; days; shares in 0-1). `types`: every event
    type of the whole population when `events` holds only some persons' events (an incremental
    run; at most MAX_EVENT_TYPES): the same share columns as the whole population's table."""
    if events.empty:
        return _stamp(_empty("n_events"), as_of)
    ev = events.copy()
    ev["day"] = ev["event_time"].dt.floor("D")
    grouped = ev.groupby("person_id")
    out = pd.DataFrame({"n_events": grouped.size().astype("int64")})
    if "session_id" in ev.columns and ev["session_id"].notna().any():
        # the day stands in only where the session is missing: its text is built for those rows alone
        missing = ev["session_id"].isna()
        sessions = ev["session_id"].astype(object)
        if missing.any():
            sessions = sessions.copy()
            sessions[missing] = "day:" + ev.loc[missing, "day"].astype(str)
    else:
        sessions = "day:" + ev["day"].astype(str)
    out["n_sessions"] = ev.assign(_s=sessions).groupby("person_id")["_s"].nunique().astype("int64")
    out["active_days"] = grouped["day"].nunique().astype("int64")
    out["events_per_session"] = out["n_events"] / out["n_sessions"].clip(lower=1)
    out["days_since_last_event"] = (as_of - grouped["event_time"].max()).dt.total_seconds() / 86400.0
    top = ev["event_type"].value_counts().index[:MAX_EVENT_TYPES] if types is None else pd.Index(types)
    counts = pd.crosstab(ev["person_id"], ev["event_type"].where(ev["event_type"].isin(top), "other"))
    if types is not None:
        counts = counts.reindex(columns=sorted(types), fill_value=0)
    shares = counts.div(counts.sum(axis=1), axis=0)
    shares.columns = [event_type_column(c) for c in shares.columns]
    out = out.join(shares).fillna(0.0)
    return _stamp(out.rename_axis("person_id"), as_of)


def support_features(tickets: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Ticket volume and recency per person (count; days; characters)."""
    if tickets.empty:
        return _stamp(_empty("n_tickets"), as_of)
    grouped = tickets.groupby("person_id")
    out = pd.DataFrame({"n_tickets": grouped.size().astype("int64")})
    if "event_time" in tickets.columns:  # a source without timestamps has no recency
        out["days_since_last_ticket"] = (as_of - grouped["event_time"].max()).dt.total_seconds() / 86400.0
    out["mean_ticket_chars"] = tickets["text"].fillna("").str.len().groupby(tickets["person_id"]).mean()
    return _stamp(out.rename_axis("person_id"), as_of)


def survey_features(surveys: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Survey participation and score (NPS 0-10) per person."""
    if surveys.empty or "score" not in surveys.columns:
        return _stamp(_empty("n_surveys"), as_of)
    ordered = surveys.sort_values("event_time") if "event_time" in surveys.columns else surveys.sort_values("_row_number")
    grouped = ordered.groupby("person_id")
    out = pd.DataFrame({"n_surveys": grouped.size().astype("int64")})
    out["score_mean"] = grouped["score"].mean()
    out["score_last"] = grouped["score"].last()
    return _stamp(out.rename_axis("person_id"), as_of)


HOLDOUT_ARM = "holdout"  # campaign rows with categorical `arm` == holdout: not exposed, conversion measured


def exposed_only(exposures: pd.DataFrame) -> pd.DataFrame:
    """Campaign rows of people actually exposed (holdout rows are a control group, not exposures)."""
    if exposures.empty or "cat__arm" not in exposures.columns:
        return exposures
    return exposures[exposures["cat__arm"].fillna("").str.lower() != HOLDOUT_ARM]


def campaign_features(exposures: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Campaign exposures and conversions per person (counts; rate 0-1). Outcomes, not model inputs."""
    exposures = exposed_only(exposures)
    if exposures.empty:
        return _stamp(_empty("n_exposures"), as_of)
    grouped = exposures.groupby("person_id")
    out = pd.DataFrame({"n_exposures": grouped.size().astype("int64")})
    out["n_conversions"] = grouped["converted"].sum().astype("int64")
    out["conversion_rate"] = out["n_conversions"] / out["n_exposures"]
    return _stamp(out.rename_axis("person_id"), as_of)


def profile_features(crm: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """CRM attributes of each person's latest CRM record: categoricals, tenure (days), labels."""
    if crm.empty:
        return _stamp(_empty("tenure_days"), as_of)
    latest = crm.sort_values("_row_number").drop_duplicates("person_id", keep="last").set_index("person_id")
    out = pd.DataFrame(index=latest.index)
    if "event_time" in latest.columns:
        out["tenure_days"] = (as_of - latest["event_time"]).dt.total_seconds() / 86400.0
    for col in latest.columns:
        if col.startswith("cat__"):
            out[col[len("cat__") :]] = latest[col].astype(object)
        elif col.startswith("num__"):
            out[col[len("num__") :]] = latest[col].astype(float)
    return _stamp(out.rename_axis("person_id"), as_of)


def label_table(frames: dict[str, pd.DataFrame], exposures: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Outcome labels per person (max over their records; 0/1), plus `converted` from campaigns."""
    parts = []
    for frame in frames.values():
        cols = [c for c in frame.columns if c.startswith("label__")]
        if cols:
            part = frame.groupby("person_id")[cols].max()
            part.columns = [c[len("label__") :] for c in cols]
            parts.append(part)
    exposures = exposed_only(exposures)
    if not exposures.empty:
        parts.append(exposures.groupby("person_id")["converted"].max().rename("converted").to_frame())
    if not parts:
        return _stamp(_empty(), as_of)
    out = pd.concat(parts, axis=1)
    out = out.T.groupby(level=0).max().T  # same label from several sources: any
    return _stamp(out.rename_axis("person_id"), as_of)


def sensitive_table(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Sensitive attributes per person, for bias audits only (latest non-missing value)."""
    parts = []
    for frame in frames.values():
        cols = [c for c in frame.columns if c.startswith("sensitive__")]
        if cols:
            part = frame.sort_values("_row_number").groupby("person_id")[cols].last()
            part.columns = [c[len("sensitive__") :] for c in cols]
            parts.append(part)
    if not parts:
        return pd.DataFrame(columns=["person_id"])
    return _last_of_each_name(pd.concat(parts, axis=1)).rename_axis("person_id").reset_index()


def _last_of_each_name(out: pd.DataFrame) -> pd.DataFrame:
    """One column per distinct name (sorted), each person's value from the last column of that
    name that has one: what `out.T.groupby(level=0).last().T` gives, column by column instead of
    through a transposed frame with one column per person (100,000 columns at 100k people: most of
    an incremental features stage). Mixed column types become object columns, as the transpose made them."""
    names = out.columns.to_numpy(dtype=object)
    mixed = out.dtypes.nunique() > 1
    cols = {}
    for name in sorted(set(names)):
        positions = np.flatnonzero(names == name)
        col = out.iloc[:, positions[-1]]
        col = col.astype(object) if mixed else col
        for p in positions[-2::-1]:
            earlier = out.iloc[:, p]
            col = col.where(col.notna(), earlier.astype(object) if mixed else earlier)
        cols[name] = col
    return pd.DataFrame(cols, index=out.index)


def person_texts(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every text a person wrote, with its source row (person_id, source, source_key, event_time, text)."""
    parts = []
    for source, frame in frames.items():
        if "text" in frame.columns:
            part = frame[frame["text"].notna()][["person_id", "source_key", "text"]].copy()
            part["event_time"] = frame.loc[part.index, "event_time"] if "event_time" in frame.columns else pd.NaT
            part["source"] = source
            parts.append(part)
    if not parts:
        return pd.DataFrame(columns=["person_id", "source", "source_key", "event_time", "text"])
    return pd.concat(parts, ignore_index=True)[["person_id", "source", "source_key", "event_time", "text"]]


def one_hot(categorical: pd.DataFrame) -> pd.DataFrame:
    """Indicator columns `<attr>__<value>` (0/1) for the frequent values of each attribute; NaN
    where the attribute itself is missing."""
    parts = []
    for col in categorical.columns:
        values = categorical[col].astype(object)
        shares = values.value_counts(normalize=True)
        for value in shares[shares >= MIN_CATEGORY_SHARE].index[:MAX_CATEGORIES]:
            slug = re.sub(r"[^a-z0-9]+", "_", str(value).lower()).strip("_") or "blank"
            parts.append((values == value).astype(float).where(values.notna()).rename(f"{col}__{slug}"[:60]))
    return pd.concat(parts, axis=1) if parts else pd.DataFrame(index=categorical.index)


def model_input_frame(tables: dict[str, pd.DataFrame], persons: pd.Index) -> pd.DataFrame:
    """One row per person: the numeric model-input features (missing view rows stay NaN)."""
    frame = pd.DataFrame(index=persons.rename("person_id"))
    for view in MODEL_INPUT_VIEWS:
        table = tables.get(view)
        if table is None or table.empty:
            continue
        values = table.set_index("person_id").drop(columns=["event_timestamp", "created"], errors="ignore")
        frame = frame.join(values.select_dtypes(include=[np.number]), how="left")
        categorical = values.select_dtypes(exclude=[np.number])
        if len(categorical.columns):
            frame = frame.join(one_hot(categorical), how="left")
    # A person absent from a count table has zero of those things; other gaps stay NaN and are
    # imputed by the model (from similar people), not guessed here.
    counts = [c for c in frame.columns if c.startswith("n_")]
    frame[counts] = frame[counts].fillna(0)
    return frame


# --- I/O edge: the tables as the features stage wrote them ------------------------------------
FEATURE_VIEWS = (
    "person_behaviour", "person_support", "person_survey", "person_campaign", "person_profile", "person_labels",
    "person_text_embedding",
)  # fmt: skip


def read_tables(features_dir, views=FEATURE_VIEWS) -> dict[str, pd.DataFrame]:
    """The offline feature tables present in `features_dir` (a Path), by view name."""
    from pathlib import Path

    out = {}
    for view in views:
        path = Path(features_dir) / f"{view}.parquet"
        if path.exists():
            out[view] = pd.read_parquet(path)
    return out


def model_frame(tables: dict[str, pd.DataFrame], persons: pd.Index) -> tuple[pd.DataFrame, list[str]]:
    """(frame by person_id with model features + `text_embedding`, the feature column names)."""
    frame = model_input_frame(tables, persons)
    columns = list(frame.columns)
    emb = tables.get("person_text_embedding")
    if emb is not None and len(emb):
        frame = frame.join(emb.set_index("person_id")[["text_embedding"]], how="left")
        frame["text_embedding"] = frame["text_embedding"].astype(object).where(frame["text_embedding"].notna(), None)
    else:
        frame["text_embedding"] = None
    return frame, columns


def outcome_frame(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per person outcomes for KPIs: labels, campaign exposures/conversions, survey score."""
    parts = []
    for view, cols in (("person_labels", None), ("person_campaign", ["n_exposures", "n_conversions"]), ("person_survey", ["score_mean"])):
        table = tables.get(view)
        if table is not None and len(table):
            t = table.set_index("person_id").drop(columns=["event_timestamp", "created"], errors="ignore")
            parts.append(t[[c for c in cols if c in t.columns]] if cols else t)
    return pd.concat(parts, axis=1) if parts else pd.DataFrame()


def record_persons(ws) -> list[str]:
    """The distinct person ids of the record -> person map (unsorted), read in record batches."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    file = pq.ParquetFile(ws.identity / "record_person.parquet")
    parts = [pc.unique(b.column(0)).cast(pa.string()) for b in file.iter_batches(columns=["person_id"], batch_size=1 << 20)]
    return pc.unique(pa.concat_arrays(parts)).to_pylist() if parts else []


def current_model_frame(ws) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, list[str]]:
    """For a Workspace: (feature tables, model frame of every resolved person, model feature columns)."""
    tables = read_tables(ws.features)
    from personaops.consent import exclude_without_analytics

    # persons without analytics consent are neither trained on nor scored (docs/governance.md);
    # the distinct persons are taken a record batch at a time in Arrow: a Python string per record
    # was 37.7M strings (~3 GiB) at 1,000,000 people for ~1.2M persons
    distinct = exclude_without_analytics(ws, pd.DataFrame({"person_id": record_persons(ws)}))
    persons = pd.Index(sorted(distinct["person_id"]), name="person_id")
    frame, columns = model_frame(tables, persons)
    return tables, frame, columns


# --- incremental features ---------------------------------------------------------------------
# An incremental run (ingest appended records, resolve kept every earlier record's person)
# recomputes the per-person rows only for the persons with a new record, and merges them into the
# tables of the last run. Population-wide parts are kept exact: the as-of time (the latest
# timestamp) moves every person's recency columns, so each person's latest event and ticket time
# is kept beside the tables and the recencies are recomputed for everyone; the event-type share
# columns come from the whole population's event types (their counts are kept; more than
# MAX_EVENT_TYPES types falls back to a full run); the profile, labels, campaign and sensitive
# tables are recomputed whole from their (small) sources. Texts of the new records are appended
# in the order a full run writes them, and only the changed persons' embeddings are recomputed.
INCREMENTAL_STATE = "_incremental"
RECENCY = {"person_behaviour": ("days_since_last_event", "last_event"), "person_support": ("days_since_last_ticket", "last_ticket")}
MERGED_VIEWS = ("person_behaviour", "person_support", "person_survey")


def _state_dir(ws) -> Path:
    return Path(ws.features) / INCREMENTAL_STATE


def inputs_fingerprint(ws, embedding_config) -> str:
    """What the feature tables depend on besides the records: this code, the embedding settings,
    consent and erasure state."""
    import hashlib

    from personaops import consent, erasure

    h = hashlib.sha256()
    for code in (Path(__file__), Path(__file__).resolve().parents[1] / "models" / "embedder.py"):
        h.update(hashlib.sha256(code.read_bytes()).digest() if code.is_file() else b"-")
    h.update(embedding_config.model_dump_json().encode())
    h.update(consent.default_status().encode())
    for path in (consent.db_path(ws), erasure.tombstone_path(ws)):
        h.update(hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b"-")
    return h.hexdigest()[:32]


def full_read_sources(ws, batches: dict[str, list[str]], kinds: dict[str, str]) -> list[str]:
    """Sources an incremental run reads whole: CRM and campaigns (profile, labels, campaign
    tables), and any source with label or sensitive columns."""
    import pyarrow.parquet as pq

    out = []
    for source, ids in batches.items():
        names = set().union(*(pq.read_schema(ws.lake / source / f"batch={b}" / "part-0.parquet").names for b in ids)) if ids else set()
        if kinds.get(source) in ("crm", "campaigns") or any(c.startswith(("label__", "sensitive__")) for c in names):
            out.append(source)
    return out


def save_incremental_state(ws, fingerprint: str, batches, kinds, as_of, events: "pd.DataFrame | EventSummary", tickets: pd.DataFrame) -> None:
    """What the next incremental run needs: inputs, as-of time, event-type counts, latest times per
    person. `events`: the event rows with their person, or full_tables' EventSummary of them."""
    import json

    folder = _state_dir(ws)
    folder.mkdir(parents=True, exist_ok=True)
    times = pd.DataFrame({"person_id": pd.Series(dtype=object)})
    summary = events if isinstance(events, EventSummary) else None  # a full_tables run: the events' summary, not their rows
    for name, frame in (("last_event", events), ("last_ticket", tickets)):
        if isinstance(frame, EventSummary):
            part = frame.last.rename(name)
            times = times.merge(part.reset_index(), on="person_id", how="outer") if len(times) else part.reset_index()
        elif len(frame) and "event_time" in frame.columns:
            part = frame.groupby("person_id")["event_time"].max().rename(name)
            times = times.merge(part.reset_index(), on="person_id", how="outer") if len(times) else part.reset_index()
    tmp = folder / ".times.parquet.tmp"
    times.to_parquet(tmp, index=False)
    tmp.replace(folder / "times.parquet")
    if summary is not None:
        counts = summary.type_counts
    else:
        counts = events["event_type"].value_counts().to_dict() if len(events) and "event_type" in events.columns else {}
    state = {"fingerprint": fingerprint, "batches": batches, "kinds": kinds, "as_of": pd.Timestamp(as_of).isoformat(), "event_types": {str(k): int(v) for k, v in counts.items()}}
    from personaops.workspace import atomic_write_text

    atomic_write_text(folder / "state.json", json.dumps(state, indent=1))


def incremental_plan(ws, fingerprint: str, batches: dict[str, list[str]], kinds: dict[str, str], resolve_mode: str | None) -> tuple[dict | None, str]:
    """(the last run's state, "") when the feature tables can be updated for new records only, else (None, why not)."""
    import json

    path = _state_dir(ws) / "state.json"
    if resolve_mode != "incremental":
        return None, "the resolve was not incremental (earlier records may have moved between persons)"
    if not path.is_file():
        return None, "no earlier feature state in the workspace"
    state = json.loads(path.read_text(encoding="utf-8"))
    if state.get("fingerprint") != fingerprint:
        return None, "the feature code, embedding settings, consent or erasures changed"
    if state.get("kinds") != kinds or set(state["batches"]) != set(batches):
        return None, "the sources changed"
    for source, ids in state["batches"].items():
        if list(batches[source][: len(ids)]) != list(ids):
            return None, f"source {source}: earlier batches were replaced"
    views = [*MERGED_VIEWS, "person_text_embedding"]
    if not all((Path(ws.features) / f"{v}.parquet").exists() for v in views) or not (Path(ws.root) / "texts" / "person_texts.parquet").exists() or not (_state_dir(ws) / "times.parquet").exists():
        return None, "an earlier feature table is missing"
    return state, ""


def incremental_tables(ws, state: dict, batches: dict[str, list[str]], kinds: dict[str, str], encode, max_texts: int):
    """(as_of, tables, texts, sensitive, changed persons, events_new, state update) of an incremental run,
    or None when a population-wide part changed too much (more than MAX_EVENT_TYPES event types)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from models.embedder import person_embeddings
    from personaops.consent import exclude_without_analytics
    from personaops.ingest import read_lake

    new_batches = {s: ids[len(state["batches"][s]) :] for s, ids in batches.items()}
    new_ids = pa.array(sorted({b for ids in new_batches.values() for b in ids}), pa.string())
    rp = pq.read_table(ws.identity / "record_person.parquet", columns=["source", "source_key", "person_id", "_batch_id"])
    changed = pc.unique(rp.filter(pc.is_in(rp["_batch_id"], value_set=new_ids))["person_id"])
    allowed = exclude_without_analytics(ws, pd.DataFrame({"person_id": changed.to_numpy(zero_copy_only=False)}))
    persons = pa.array(allowed["person_id"].tolist(), pa.string())
    full = full_read_sources(ws, batches, kinds)
    frames: dict[str, pd.DataFrame] = {}
    for source, ids in batches.items():
        part = rp.filter(pc.equal(rp["source"], source))
        if source not in full:
            part = part.filter(pc.is_in(part["person_id"], value_set=persons))
        mapping = part.select(["source", "source_key", "person_id"]).to_pandas()
        if source in full:
            mapping = exclude_without_analytics(ws, mapping)
        keys = pa.array(mapping["source_key"].tolist(), pa.string())
        frame = read_lake(ws, source, ids, [*LAKE_COLUMNS, "_batch_id"], LAKE_PREFIXES, keys=keys)
        frame["source"] = source
        frames[source] = _with_person(frame, mapping, source)
    stamps = [f["event_time"].max() for f in frames.values() if "event_time" in f.columns and f["event_time"].notna().any()]
    as_of = max([pd.Timestamp(state["as_of"]).as_unit("ns"), *stamps])

    def of_kind(kind: str, pool: dict) -> pd.DataFrame:
        parts = [pool[s] for s, k in kinds.items() if k == kind and s in pool and len(pool[s])]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    new_frames = {s: f[f["_batch_id"].isin(new_batches[s])] if "_batch_id" in f.columns else f.iloc[:0] for s, f in frames.items()}
    frames = {s: f.drop(columns=["_batch_id"], errors="ignore") for s, f in frames.items()}
    new_frames = {s: f.drop(columns=["_batch_id"], errors="ignore") for s, f in new_frames.items()}
    events, tickets = of_kind("events", frames), of_kind("tickets", frames)
    new_events = of_kind("events", new_frames)
    counts = dict(state["event_types"])
    if len(new_events):
        for t, n in new_events["event_type"].value_counts().items():
            counts[str(t)] = counts.get(str(t), 0) + int(n)
    if len(counts) > MAX_EVENT_TYPES:
        return None
    campaigns = of_kind("campaigns", frames)
    full_frames = {s: f for s, f in frames.items() if s in full}
    fresh = {
        "person_behaviour": behaviour_features(events, as_of, types=sorted(counts)) if len(events) else None,
        "person_support": support_features(tickets, as_of) if len(tickets) else None,
        "person_survey": survey_features(of_kind("surveys", frames), as_of) if len(of_kind("surveys", frames)) else None,
    }
    times = pd.read_parquet(_state_dir(ws) / "times.parquet").set_index("person_id")
    for name, frame in (("last_event", events), ("last_ticket", tickets)):
        if len(frame) and "event_time" in frame.columns:
            latest = frame.groupby("person_id")["event_time"].max()
            if name not in times.columns:
                times[name] = pd.Series(pd.NaT, index=times.index, dtype=latest.dtype)
            times = times.reindex(times.index.union(latest.index))
            times.loc[latest.index, name] = latest
    tables = {}
    for view in MERGED_VIEWS:
        old = pd.read_parquet(Path(ws.features) / f"{view}.parquet")
        new = fresh[view]
        if new is None or not len(new):
            merged = old
        else:
            kept = old[~old["person_id"].isin(persons.to_pylist())]
            columns = list(new.columns) + [c for c in old.columns if c not in new.columns]
            merged = pd.concat([kept, new], ignore_index=True)[columns]
            if view == "person_behaviour":
                shares = [c for c in merged.columns if c.startswith("share_")]
                merged[shares] = merged[shares].fillna(0.0)
            for col in old.columns:
                if col in merged.columns and old[col].dtype != merged[col].dtype and col not in ("event_timestamp", "created"):
                    merged[col] = merged[col].astype(old[col].dtype)
        merged = merged.sort_values("person_id", kind="stable").reset_index(drop=True)
        if view in RECENCY and RECENCY[view][0] in merged.columns:
            col, name = RECENCY[view]
            last = times[name].reindex(merged["person_id"]).reset_index(drop=True)
            merged[col] = (as_of - last).dt.total_seconds() / 86400.0
        merged["event_timestamp"], merged["created"] = as_of, as_of
        tables[view] = merged
    tables["person_campaign"] = campaign_features(campaigns, as_of)
    tables["person_profile"] = profile_features(of_kind("crm", frames), as_of)
    tables["person_labels"] = label_table(full_frames, campaigns, as_of)
    sensitive = sensitive_table(full_frames)
    # texts: the earlier ones, then each source's new ones after that source's earlier ones (a full run's order)
    old_texts = pd.read_parquet(Path(ws.root) / "texts" / "person_texts.parquet")
    added = person_texts({s: f for s, f in new_frames.items() if len(f)})
    texts = pd.concat([old_texts, added], ignore_index=True) if len(added) else old_texts
    rank = {s: i for i, s in enumerate(batches)}
    texts = texts.iloc[np.argsort(texts["source"].map(rank).to_numpy(), kind="stable")].reset_index(drop=True)
    mine = texts[texts["person_id"].isin(persons.to_pylist())].reset_index(drop=True)
    emb_old = pd.read_parquet(Path(ws.features) / "person_text_embedding.parquet")
    vectors = encode(mine["text"].tolist())
    emb_new = person_embeddings(mine, vectors, max_texts)
    emb = pd.concat([emb_old[~emb_old["person_id"].isin(persons.to_pylist())].drop(columns=["event_timestamp", "created"], errors="ignore"), emb_new], ignore_index=True)
    emb = emb.sort_values("person_id", kind="stable").reset_index(drop=True)
    emb["n_texts"] = emb["n_texts"].astype("int64")
    emb["event_timestamp"], emb["created"] = as_of, as_of
    tables["person_text_embedding"] = emb
    update = {"as_of": as_of, "event_types": counts, "times": times.reset_index().rename(columns={"index": "person_id"})}
    return as_of, tables, texts, sensitive, len(persons), update


def save_incremental_update(ws, fingerprint: str, batches, kinds, update: dict) -> None:
    import json

    from personaops.workspace import atomic_write_text

    folder = _state_dir(ws)
    tmp = folder / ".times.parquet.tmp"
    update["times"].to_parquet(tmp, index=False)
    tmp.replace(folder / "times.parquet")
    state = {"fingerprint": fingerprint, "batches": batches, "kinds": kinds, "as_of": pd.Timestamp(update["as_of"]).isoformat(), "event_types": update["event_types"]}
    atomic_write_text(folder / "state.json", json.dumps(state, indent=1))


def definitions_fingerprint(ws, cfg) -> str | None:
    """A hash of what `feast apply` reads (the feature repo's files, the config, each feature
    table's columns and types), or None where the registry is not the workspace's own file (then
    every run applies)."""
    import hashlib

    import pyarrow.parquet as pq

    if cfg.profile != "local" or not (Path(ws.feast) / "registry.db").is_file():
        return None
    h = hashlib.sha256(cfg.model_dump_json().encode())
    repo = Path(cfg.feature_repo)
    for path in sorted(p for p in repo.rglob("*") if p.is_file() and p.suffix in (".py", ".yaml", ".yml")) if repo.is_dir() else []:
        h.update(str(path.relative_to(repo)).encode() + hashlib.sha256(path.read_bytes()).digest())
    for path in sorted(Path(ws.features).glob("*.parquet")):
        h.update(path.name.encode() + str(pq.read_schema(path).remove_metadata()).encode())
    return h.hexdigest()[:32]


def applied_views(ws, fingerprint: str | None) -> list[str] | None:
    """The feature views of the last `feast apply` when it had the same fingerprint (None: apply)."""
    import json

    path = _state_dir(ws) / "apply.json"
    if fingerprint is None or not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    return saved["views"] if saved.get("fingerprint") == fingerprint else None


def remember_apply(ws, fingerprint: str | None, views: list[str]) -> None:
    import json

    from personaops.workspace import atomic_write_text

    if fingerprint is not None:
        _state_dir(ws).mkdir(parents=True, exist_ok=True)
        atomic_write_text(_state_dir(ws) / "apply.json", json.dumps({"fingerprint": fingerprint, "views": views}))


def forget_incremental_state(ws) -> None:
    """Drop the incremental state before the tables are rewritten (a run killed part-way then
    computes everything next time instead of merging into half-written tables)."""
    (_state_dir(ws) / "state.json").unlink(missing_ok=True)


# --- a full run within bounded memory ------------------------------------------------------------
# A full run used to hold every lake row with its person as pandas objects (the records-to-person
# map and the events with their person id, session and type strings: 12-14 GiB estimated at
# 1,000,000 people). `full_tables` computes the same tables with the event rows streamed: each
# record batch of an events source gets its person from a sorted index of record-key hashes and
# is folded into per-person partial aggregates that combine exactly (counts add, maxima take the
# max, distinct sessions and days are kept as distinct (person, value) pairs). The other sources
# (CRM, tickets, surveys, campaigns: an eighth of the rows) are read as before.
STREAM_BATCH_ROWS = 1 << 18  # rows of a record batch folded at a time: memory follows this, not the rows


class EventSummary:
    """What a full run keeps of the events instead of their rows: the behaviour table, each
    person's latest event time and the event-type counts (for the incremental state)."""

    def __init__(self, table: pd.DataFrame, last: pd.Series, type_counts: dict[str, int]) -> None:
        self.table, self.last, self.type_counts = table, last, type_counts


class _Fallback(Exception):
    """The streamed events path cannot give exactly what the whole-frame path gives for this data."""


def _streamable_events(ws, batches: dict[str, list[str]], kinds: dict[str, str]) -> list[str]:
    """The events sources whose rows only feed the behaviour table (no text, label or sensitive
    columns) and that have event times and types: those are streamed; [] when any is not."""
    import pyarrow.parquet as pq

    sources = [s for s, k in kinds.items() if k == "events" and s in batches]
    for source in sources:
        for b in batches[source]:
            names = set(pq.read_schema(ws.lake / source / f"batch={b}" / "part-0.parquet").names)
            if "text" in names or any(c.startswith(("label__", "sensitive__")) for c in names) or not {"event_time", "event_type", "source_key"} <= names:
                return []
    return sources


def _record_index(ws, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """The records of `source` of persons with analytics consent, as (first key hash sorted,
    second key hash, person code) and the persons (code -> person id); read in batches."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from personaops.consent import exclude_without_analytics
    from personaops.ingest import _key_hashes

    codes_of: dict[str, int] = {}
    h1s, h2s, codes = [], [], []
    file = pq.ParquetFile(ws.identity / "record_person.parquet")
    for batch in file.iter_batches(batch_size=STREAM_BATCH_ROWS, columns=["source", "source_key", "person_id"]):
        batch = batch.filter(pc.equal(batch.column("source"), source))
        if not batch.num_rows:
            continue
        if batch.column("source_key").null_count or batch.column("person_id").null_count:
            raise _Fallback("a record without key or person")
        h1, h2 = _key_hashes(batch.column("source_key").to_numpy(zero_copy_only=False))
        encoded = pc.dictionary_encode(batch.column("person_id"))
        local = np.array([codes_of.setdefault(p, len(codes_of)) for p in encoded.dictionary.to_pylist()], dtype=np.int64)
        h1s.append(h1)
        h2s.append(h2)
        codes.append(local[encoded.indices.to_numpy(zero_copy_only=False)])
    persons = list(codes_of)
    h1 = np.concatenate(h1s) if h1s else np.empty(0, dtype=np.uint64)
    h2 = np.concatenate(h2s) if h2s else np.empty(0, dtype=np.uint64)
    code = np.concatenate(codes) if codes else np.empty(0, dtype=np.int64)
    del h1s, h2s, codes
    allowed = exclude_without_analytics(ws, pd.DataFrame({"person_id": pd.Series(persons, dtype=object)}))
    if len(allowed) < len(persons):
        keep_person = np.zeros(len(persons), dtype=bool)
        keep_person[[codes_of[p] for p in allowed["person_id"]]] = True
        keep = keep_person[code]
        h1, h2, code = h1[keep], h2[keep], code[keep]
    order = np.argsort(h1, kind="stable")
    h1, h2, code = h1[order], h2[order], code[order]
    if len(h1) > 1 and (h1[1:] == h1[:-1]).any():  # a key twice, or two keys sharing a 64-bit hash: the merge's rules apply
        raise _Fallback("a record key's first hash repeats")
    return h1, h2, code, persons


def _event_summary(ws, batches: dict[str, list[str]], sources: list[str]) -> tuple["_BehaviourParts", pd.Timestamp]:
    """The behaviour table's inputs folded batch by batch (see above); (summary, latest event time).
    Equals behaviour_features on the events joined with their persons (tests/unit/test_features.py)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from personaops.ingest import _key_hashes

    person_ids: dict[str, int] = {}  # person id -> global code
    type_codes: dict[str, int] = {}  # event type -> code, in order of first appearance (value_counts' order before sorting)
    n_events, last_time, type_n, sessions, days = [], [], [], [], []
    for source in sources:
        h1, h2, code, persons = _record_index(ws, source)
        to_global = np.array([person_ids.setdefault(p, len(person_ids)) for p in persons], dtype=np.int64)
        for b in batches[source]:
            path = ws.lake / source / f"batch={b}" / "part-0.parquet"
            file = pq.ParquetFile(path)
            columns = [c for c in ("source_key", "event_time", "event_type", "session_id") if c in file.schema_arrow.names]
            for batch in file.iter_batches(batch_size=STREAM_BATCH_ROWS, columns=columns):
                if batch.column("source_key").null_count:
                    raise _Fallback("an event without key")
                q1, q2 = _key_hashes(batch.column("source_key").to_numpy(zero_copy_only=False))
                needles = np.argsort(q1)  # sorted needles: each binary search starts near the last
                at = np.empty(len(q1), dtype=np.int64)
                at[needles] = np.minimum(np.searchsorted(h1, q1[needles]), max(len(h1) - 1, 0))
                hit = (h1[at] == q1) & (h2[at] == q2) if len(h1) else np.zeros(len(q1), dtype=bool)
                if not hit.any():
                    continue
                rows = np.flatnonzero(hit)
                batch = batch.take(pa_indices(rows))
                person = to_global[code[at[rows]]]
                times, types = batch.column("event_time"), batch.column("event_type")
                if times.null_count or types.null_count:
                    raise _Fallback("an event without time or type")
                t = times.cast("int64").to_numpy()
                encoded = pc.dictionary_encode(types)
                local = np.array([type_codes.setdefault(v, len(type_codes)) for v in encoded.dictionary.to_pylist()], dtype=np.int64)
                kind = local[encoded.indices.to_numpy(zero_copy_only=False)]
                day = np.floor_divide(t, 86_400 * 10**9) * (86_400 * 10**9)
                session = batch.column("session_id").to_numpy(zero_copy_only=False) if "session_id" in columns else np.full(len(t), None, dtype=object)
                session = np.asarray(session, dtype=object)
                missing = pd.isna(session)
                if missing.any():  # the day stands in for a missing session, spelled as behaviour_features spells it
                    session = session.copy()
                    session[missing] = ("day:" + pd.Series(pd.to_datetime(day[missing], utc=True)).astype(str)).to_numpy(dtype=object)
                s1, s2 = _key_hashes(session, repeated=True)
                frame = pd.DataFrame({"p": person, "t": t, "k": kind, "d": day, "s1": s1, "s2": s2})
                grouped = frame.groupby("p")
                n_events.append(grouped.size())
                last_time.append(grouped["t"].max())
                type_n.append(frame.groupby(["p", "k"]).size())
                sessions.append(frame[["p", "s1", "s2"]].drop_duplicates())
                days.append(frame[["p", "d"]].drop_duplicates())
        del h1, h2, code
    if not n_events:
        raise _Fallback("no event of a person")  # the whole-frame path's empty table
    names = np.array(list(person_ids), dtype=object)
    n = pd.concat(n_events).groupby(level=0).sum()
    last = pd.concat(last_time).groupby(level=0).max()
    s = pd.concat(sessions, ignore_index=True)
    if (s.drop_duplicates(["p", "s1"]).shape[0]) != s.drop_duplicates().shape[0]:
        raise _Fallback("two sessions of a person share a 64-bit hash")
    n_sessions = s.drop_duplicates().groupby("p").size()
    active = pd.concat(days, ignore_index=True).drop_duplicates().groupby("p").size()
    kinds_n = pd.concat(type_n).groupby(level=[0, 1]).sum()
    types = np.array(list(type_codes), dtype=object)
    type_total = kinds_n.groupby(level=1).sum()
    counts_by_type = pd.Series(type_total.reindex(np.arange(len(types))).to_numpy(), index=pd.Index(types, dtype=object), name="count").sort_values(ascending=False)
    latest = int(last.max())
    summary = _BehaviourParts(names, n, n_sessions, active, last, kinds_n, types, counts_by_type)
    return summary, pd.Timestamp(latest, tz="UTC")


def pa_indices(rows: np.ndarray):
    import pyarrow as pa

    return pa.array(rows, type=pa.int64())


class _BehaviourParts:
    """Per-person partial aggregates of the events, combined; `finish(as_of)` gives the table."""

    def __init__(self, names, n, n_sessions, active, last, kinds_n, types, counts_by_type) -> None:
        self.names, self.n, self.n_sessions, self.active, self.last_ns = names, n, n_sessions, active, last
        self.kinds_n, self.types, self.counts_by_type = kinds_n, types, counts_by_type

    def _by_person(self, series: pd.Series) -> pd.Series:
        return pd.Series(series.to_numpy(), index=pd.Index(self.names[series.index.to_numpy()], dtype=object, name="person_id"))

    def finish(self, as_of: pd.Timestamp) -> EventSummary:
        """The behaviour table (behaviour_features' columns, order and arithmetic), the latest event per person, the type counts."""
        last = self._by_person(self.last_ns)
        last = pd.Series(pd.to_datetime(last.to_numpy(), utc=True), index=last.index, name="event_time").sort_index()
        out = pd.DataFrame({"n_events": self._by_person(self.n).sort_index().astype("int64")})
        out["n_sessions"] = self._by_person(self.n_sessions).astype("int64")
        out["active_days"] = self._by_person(self.active).astype("int64")
        out["events_per_session"] = out["n_events"] / out["n_sessions"].clip(lower=1)
        out["days_since_last_event"] = (as_of - last).dt.total_seconds() / 86400.0
        top = self.counts_by_type.index[:MAX_EVENT_TYPES]
        labels = np.where(np.isin(self.types, np.asarray(top, dtype=object)), self.types, "other").astype(object)
        persons = self.names[self.kinds_n.index.get_level_values(0).to_numpy()]
        kind_labels = labels[self.kinds_n.index.get_level_values(1).to_numpy()]
        long = pd.Series(self.kinds_n.to_numpy(), index=pd.MultiIndex.from_arrays([pd.Index(persons, dtype=object, name="person_id"), pd.Index(kind_labels, dtype=object, name="event_type")]))
        counts = long.groupby(level=[0, 1]).sum().unstack(fill_value=0).astype("int64")
        shares = counts.div(counts.sum(axis=1), axis=0)
        shares.columns = [event_type_column(c) for c in shares.columns]
        out = out.join(shares).fillna(0.0)
        table = _stamp(out.rename_axis("person_id"), as_of)
        type_counts = {str(k): int(v) for k, v in self.counts_by_type.items()}
        return EventSummary(table, last.rename_axis("person_id"), type_counts)


def full_tables(ws, batches: dict[str, list[str]], kinds: dict[str, str]):
    """(as_of, tables without the embeddings, texts, sensitive, update for save_incremental_state)
    of a full run: what the features stage computes from whole frames (`behaviour_features` and the
    rest on every source's rows with their person), with the events streamed (see above). Falls
    back to whole frames where the events carry more than the behaviour table reads."""
    import pyarrow.parquet as pq

    from personaops.consent import exclude_without_analytics
    from personaops.ingest import read_lake

    streamed = _streamable_events(ws, batches, kinds)
    summary = latest = None
    if streamed:
        try:
            summary, latest = _event_summary(ws, batches, streamed)
        except _Fallback:
            streamed, summary, latest = [], None, None
    frames: dict[str, pd.DataFrame] = {}
    for source, ids in batches.items():
        if source in streamed:
            continue
        mapping = pq.read_table(ws.identity / "record_person.parquet", columns=["source", "source_key", "person_id"], filters=[("source", "=", source)]).to_pandas()
        mapping = exclude_without_analytics(ws, mapping)
        frame = read_lake(ws, source, ids, list(LAKE_COLUMNS), LAKE_PREFIXES)
        frame["source"] = source
        frames[source] = _with_person(frame, mapping, source)
        del mapping
    stamps = [f["event_time"].max() for f in frames.values() if "event_time" in f.columns and f["event_time"].notna().any()]
    if latest is not None:
        stamps.append(latest)
    as_of = max(stamps) if stamps else pd.Timestamp("1970-01-01", tz="UTC")

    def of_kind(kind: str) -> pd.DataFrame:
        parts = [frames[s] for s, k in kinds.items() if k == kind and s in frames and len(frames[s])]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    tickets, campaigns = of_kind("tickets"), of_kind("campaigns")
    if summary is not None:
        events = summary.finish(as_of)
        behaviour = events.table
    else:
        events = of_kind("events")
        behaviour = behaviour_features(events, as_of)
    tables = {
        "person_behaviour": behaviour,
        "person_support": support_features(tickets, as_of),
        "person_survey": survey_features(of_kind("surveys"), as_of),
        "person_campaign": campaign_features(campaigns, as_of),
        "person_profile": profile_features(of_kind("crm"), as_of),
        "person_labels": label_table(frames, campaigns, as_of),
    }
    texts = person_texts(frames)
    sensitive = sensitive_table(frames)
    return as_of, tables, texts, sensitive, {"events": events, "tickets": tickets}
