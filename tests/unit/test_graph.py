"""The persona graph: signals, node/edge tables, DuckDB and networkx round trips (small frames)."""

import numpy as np
import pandas as pd

from personaops import graph
from personaops.workspace import Workspace

T0 = pd.Timestamp("2024-09-01", tz="UTC")


def _events():
    rows = []
    for person, sessions in {"P1": [["error_seen", "help_center_view", "plan_downgrade"]], "P2": [["login", "page_view"], ["login", "error_seen"]]}.items():
        for s, types in enumerate(sessions):
            for e, t in enumerate(types):
                rows.append({"person_id": person, "session_id": f"{person}-{s}", "event_type": t, "event_time": T0 + pd.Timedelta(minutes=10 * s + e)})
    return pd.DataFrame(rows)


def _inputs():
    assignments = pd.DataFrame({"person_id": ["P1", "P2", "P3"], "persona_id": [0, 1, 1], "persona_name": ["strugglers", "browsers", "browsers"], "confidence": [0.9, 0.8, 0.7]})
    intents = pd.DataFrame({"intent_id": [0, 1], "label": ["cancel/refund/plan", "api/export/query"], "n_texts": [2, 1]})
    text_intents = pd.DataFrame({
        "person_id": ["P1", "P1", "P3"], "source": ["tickets", "surveys", "tickets"], "source_key": ["K1", "R1", "K2"],
        "event_time": [T0] * 3, "text": ["cancel please", "refund", "api"], "intent_id": [0, 0, 1],
    })  # fmt: skip
    exposures = pd.DataFrame({
        "person_id": ["P1", "P2", "P3"], "campaign": ["promo"] * 3, "converted": [1.0, 0.0, 1.0],
        "event_time": [T0] * 3, "cat__arm": ["exposed", "exposed", "holdout"],
    })  # fmt: skip
    return assignments, _events(), text_intents, intents, exposures


def test_sequence_signals_are_transitions_three_step_sequences_co_occurrences_and_event_types():
    signals = graph.sequence_signals(graph.session_frame(_events()))
    p1 = set(signals.loc[signals["person_id"] == "P1", "signal"])
    assert {"next:error_seen>help_center_view", "next:help_center_view>plan_downgrade", "seq:error_seen>help_center_view>plan_downgrade"} <= p1
    assert "co:error_seen+plan_downgrade" in p1 and "did:plan_downgrade" in p1
    p2 = set(signals.loc[signals["person_id"] == "P2", "signal"])
    # sessions are separate: no transition across P2's two sessions, no 3-step sequence
    assert "next:page_view>login" not in p2 and not any(s.startswith("seq:") for s in p2)


def test_graph_tables_round_trip_through_duckdb_and_networkx(tmp_path):
    ws = Workspace(tmp_path)
    nodes, edges = graph.build_graph(*_inputs())
    assert set(edges["kind"]) == {"belongs_to", "did", "next", "co_occurs", "mentions", "filed", "about", "exposed_to", "converted", "held_out"}
    assert set(nodes["kind"]) == {"person", "persona", "event_type", "intent", "ticket", "campaign"}
    graph.write_graph(ws, "20240101T000000Z-aaaaaa", nodes, edges)
    assert graph.latest_graph_run(ws) == "20240101T000000Z-aaaaaa"
    counts = graph.query(ws, "SELECT kind, count(*) AS n FROM edges GROUP BY kind").set_index("kind")["n"]
    assert counts.to_dict() == edges["kind"].value_counts().to_dict()
    nxt = graph.query(ws, "SELECT src, dst, weight FROM edges WHERE kind = 'next' AND src = 'event_type:help_center_view'")
    assert nxt.to_dict("records") == [{"src": "event_type:help_center_view", "dst": "event_type:plan_downgrade", "weight": 1.0}]
    g = graph.load_networkx(ws)
    assert g.number_of_nodes() == len(nodes) and g.number_of_edges() == len(edges)
    assert g.nodes["persona:1"]["name"] == "browsers" and g.nodes["persona:1"]["weight"] == 2.0
    # the holdout person is held out, not exposed; the converted edge is only for exposed people
    assert g.has_edge("person:P3", "campaign:promo", key="held_out") and not g.has_edge("person:P3", "campaign:promo", key="exposed_to")
    assert g.has_edge("person:P1", "campaign:promo", key="converted") and not g.has_edge("person:P2", "campaign:promo", key="converted")
    assert g["person:P1"]["event_type:error_seen"]["did"]["last_seen"] == T0


def test_signal_matrix_and_graph_features():
    assignments, events, text_intents, intents, _ = _inputs()
    signals = graph.person_signals(graph.session_frame(events), text_intents, intents)
    persons = pd.Index(["P1", "P2", "P3"], name="person_id")
    m = graph.signal_matrix(signals, persons, min_persons=1, max_share=0.6)
    assert "intent:cancel/refund/plan" in m.columns and m.loc["P1", "intent:cancel/refund/plan"] == 1
    assert "did:error_seen" not in m.columns  # shown by 2 of 3 people (67%): above a 60% ceiling ...
    m = graph.signal_matrix(signals, persons, min_persons=1, max_share=0.9)
    assert m.loc["P2", "did:error_seen"] == 1 and m.loc["P3"].sum() == 1  # ... at a 90% ceiling it is kept
    mix = pd.DataFrame({"person_id": ["P1", "P3"], "intent_0": [1.0, 0.0], "intent_1": [0.0, 1.0]})
    churned = pd.Series([1.0, 0.0, np.nan], index=persons)
    feats = graph.graph_features(m, mix, churned, T0).set_index("person_id")
    assert feats.loc["P1", "n_sequence_patterns"] == 1 and feats.loc["P2", "n_sequence_patterns"] == 0
    # P2 shares did:error_seen with P1 only (churned): leave-one-out neighbourhood churn is 1.0
    assert feats.loc["P2", "neighbourhood_churn_rate"] == 1.0
    assert abs(feats.loc["P1", "intent_centrality"] - 1 / 3) < 1e-9  # 1 of 3 people mention its intent


def _reference_signals(sessions):
    """The signals spelled out with one string per row (the original, readable definition)."""
    s = sessions.reset_index(drop=True)
    same1 = s["session"].eq(s["session"].shift(-1))
    same2 = same1 & s["session"].eq(s["session"].shift(-2))
    a, b, c = s["event_type"].astype(str), s["event_type"].shift(-1).astype(str), s["event_type"].shift(-2).astype(str)
    parts = [pd.DataFrame({"person_id": s["person_id"], "signal": "next:" + a + ">" + b})[same1 & (a != b)]]
    parts.append(pd.DataFrame({"person_id": s["person_id"], "signal": "seq:" + a + ">" + b + ">" + c})[same2 & (a != b) & (b != c)])
    types = s[["person_id", "session", "event_type"]].drop_duplicates()
    pairs = types.merge(types, on=["person_id", "session"])
    pairs = pairs[pairs["event_type_x"].astype(str) < pairs["event_type_y"].astype(str)]
    parts.append(pd.DataFrame({"person_id": pairs["person_id"], "signal": "co:" + pairs["event_type_x"].astype(str) + "+" + pairs["event_type_y"].astype(str)}))
    parts.append(pd.DataFrame({"person_id": s["person_id"], "signal": "did:" + a}))
    co = pairs[["event_type_x", "event_type_y"]].assign(session=pairs["session"]).drop_duplicates().groupby(["event_type_x", "event_type_y"]).size()
    return pd.concat(parts, ignore_index=True).drop_duplicates().reset_index(drop=True), co.reset_index(name="weight")


def test_signals_and_co_occurrences_on_codes_equal_the_string_definition():
    rng = np.random.default_rng(5)
    names = ["login", "view", "Err", "z_last", "a b", "pay", None]
    for trial in range(12):
        n = int(rng.integers(1, 1500))
        events = pd.DataFrame({
            "person_id": [f"P{int(x)}" for x in rng.integers(0, max(1, n // 15), n)],
            "session_id": [f"s{int(x)}" if x else None for x in rng.integers(0, 20 if trial % 3 else 1, n)],  # some or all missing
            "event_type": [names[int(x)] for x in rng.integers(0, 7 if trial % 2 else 2, n)],
            "device_id": "d", "event_time": T0 + pd.to_timedelta(rng.integers(0, 10**6, n), unit="s"),
        })  # fmt: skip
        sessions = graph.session_frame(events)
        assert list(sessions.columns) == ["person_id", "session", "event_type", "event_time"]
        signals, co = _reference_signals(sessions)
        pd.testing.assert_frame_equal(graph.sequence_signals(sessions), signals)
        pd.testing.assert_frame_equal(graph._co_occurrences(sessions.reset_index(drop=True)), co)
        # the categorical form (what the graph stage keeps and writes): the same rows, values and order
        ti = pd.DataFrame({"person_id": events["person_id"].iloc[: n // 3].tolist(), "intent_id": [i % 2 for i in range(n // 3)]})
        intents = pd.DataFrame({"intent_id": [0, 1], "label": ["cancel", "api"]})
        plain = graph.person_signals(sessions, ti, intents)
        cat = graph.person_signals(sessions, ti, intents, categorical=True)
        assert all(isinstance(cat[c].dtype, pd.CategoricalDtype) for c in cat.columns) or cat.empty
        pd.testing.assert_frame_equal(cat.astype(object), plain.astype(object))
        persons = pd.Index(sorted(set(events["person_id"])) + ["nobody"], name="person_id")
        expected = _reference_matrix(plain, persons, 3)
        pd.testing.assert_frame_equal(graph.signal_matrix(plain, persons, 3), expected)
        pd.testing.assert_frame_equal(graph.signal_matrix(cat, persons, 3), expected)


def _reference_matrix(signals: pd.DataFrame, persons: pd.Index, min_persons: int, max_share: float = 0.95) -> pd.DataFrame:
    """signal_matrix by its definition, on strings: support, keep, fill the kept pairs."""
    support = signals.groupby("signal")["person_id"].nunique()
    keep = support[(support >= min_persons) & (support <= max_share * len(persons))].index
    kept = signals[signals["signal"].isin(keep) & signals["person_id"].isin(persons)]
    columns = pd.Index(np.sort(kept["signal"].unique()), name="signal")
    m = np.zeros((len(persons), len(columns)), dtype="uint8")
    m[persons.get_indexer(kept["person_id"]), columns.get_indexer(kept["signal"])] = 1
    return pd.DataFrame(m, index=persons, columns=columns)


def _random_events(rng, persons: list[str], n: int, t0: pd.Timestamp, sessions: int) -> pd.DataFrame:
    names = ["login", "view", "Err", "z_last", "a b", "pay", None, "refund"]
    return pd.DataFrame({
        "person_id": [persons[int(x)] for x in rng.integers(0, len(persons), n)],
        "session_id": [f"s{int(x)}" if x else None for x in rng.integers(0, sessions, n)],
        "event_type": [names[int(x)] for x in rng.integers(0, len(names), n)],
        "event_time": t0 + pd.to_timedelta(rng.integers(0, 10**5, n), unit="s"),
    })  # fmt: skip


def test_an_incremental_update_of_the_behaviour_part_equals_a_full_build(tmp_path):
    """Earlier events plus a new batch (events of earlier persons, some in their earlier sessions,
    and of new persons): the last graph's tables, updated for the persons with new events only,
    equal a full build on all events — nodes, edges, person signals (rows and order), the signal
    matrix and graph features."""
    import pyarrow.parquet as pq

    ws = Workspace(tmp_path)
    rng = np.random.default_rng(11)
    intents = pd.DataFrame({"intent_id": [0, 1], "label": ["cancel", "api"], "n_texts": [3, 2]})
    for trial in range(6):
        earlier = [f"P{i}" for i in range(int(rng.integers(5, 40)))]  # P1 and P10...: person order in sessions is "P1|" vs "P10|" as text
        joiners = [f"N{i}" for i in range(int(rng.integers(0, 6)))]
        old = _random_events(rng, earlier, int(rng.integers(50, 900)), T0, 12 if trial % 2 else 2)
        movers = earlier[: int(rng.integers(0, len(earlier) // 2 + 1))]
        new = _random_events(rng, movers + joiners, int(rng.integers(0, 200)) if movers or joiners else 0, T0 + pd.Timedelta(hours=trial), 14)
        events = pd.concat([old, new], ignore_index=True)  # the lake's order: earlier batches first
        people = sorted(set(earlier) | set(joiners))
        assignments = pd.DataFrame({"person_id": people, "persona_id": [i % 3 for i in range(len(people))], "persona_name": [f"p{i % 3}" for i in range(len(people))], "confidence": 0.5})
        ti = pd.DataFrame({"person_id": people[::3], "source": "tickets", "source_key": [f"K{i}" for i in range(len(people[::3]))], "event_time": T0, "text": "t", "intent_id": [i % 2 for i in range(len(people[::3]))]})
        exposures = pd.DataFrame({"person_id": people[::2], "campaign": "promo", "converted": 1.0, "event_time": T0, "cat__arm": "exposed"})
        full_sessions = graph.session_frame(events)
        full_nodes, full_edges = graph.build_graph(assignments, None, ti, intents, exposures, sessions=full_sessions)
        full_signals = graph.person_signals(full_sessions, ti, intents, categorical=True)
        # the earlier run's graph, written and read back
        run = f"2024010{trial}T000000Z-aaaaaa"
        before = graph.session_frame(old)
        written = graph.write_graph(ws, run, *graph.build_graph(assignments, None, ti, intents, exposures, sessions=before))
        prev_nodes, prev_edges = pd.read_parquet(written["nodes"]), pd.read_parquet(written["edges"])
        prev_signals = graph.person_signals(before, ti, intents, categorical=True)
        pq.write_table(__import__("pyarrow").Table.from_pandas(prev_signals.astype(object), preserve_index=False), tmp_path / f"{run}.parquet")
        prev_signals = pq.read_table(tmp_path / f"{run}.parquet", read_dictionary=["person_id", "signal"]).to_pandas()
        prev_signals = prev_signals[~prev_signals["signal"].astype(str).str.startswith("intent:")]
        # the update: only the persons with a new event
        changed = pd.Index(sorted(set(new["person_id"])), dtype=object)
        then = graph.session_frame(old[old["person_id"].isin(changed)])
        now = graph.session_frame(events[events["person_id"].isin(changed)])
        parts = graph.update_event_parts(graph.parts_from_graph(prev_nodes, prev_edges), graph.event_parts(then), graph.event_parts(now), changed)
        nodes, edges = graph.build_graph(assignments, None, ti, intents, exposures, parts=parts)
        pd.testing.assert_frame_equal(nodes, full_nodes)
        pd.testing.assert_frame_equal(edges, full_edges)
        sequence = graph.merge_sequence_signals(prev_signals, graph.sequence_signals(now, categorical=True), changed)
        signals = graph.combine_signals([sequence, graph.intent_signals(ti, intents)], categorical=True)
        pd.testing.assert_frame_equal(signals.astype(object), full_signals.astype(object))
        persons = pd.Index(people, name="person_id")
        matrix = graph.signal_matrix(signals, persons, 2, 0.9)
        pd.testing.assert_frame_equal(matrix, graph.signal_matrix(full_signals, persons, 2, 0.9))
        churned = pd.Series([float(i % 2) for i in range(len(people))], index=persons)
        mix = pd.DataFrame({"person_id": people[::3], "intent_0": 1.0, "intent_1": 0.0})
        pd.testing.assert_frame_equal(graph.graph_features(matrix, mix, churned, T0), graph.graph_features(graph.signal_matrix(full_signals, persons, 2, 0.9), mix, churned, T0))


def test_person_buckets_combined_equal_the_whole_frame():
    """The behaviour part and sequence signals computed per bucket of persons (ranges in `person|`
    text order) and combined equal event_parts / sequence_signals of all sessions at once; the
    sparse signal matrix equals the dense one, and graph features on either are the same."""
    rng = np.random.default_rng(23)
    for trial in range(8):
        people = [f"P{i}" for i in range(int(rng.integers(3, 60)))]  # P1 and P10: "P1|" sorts after "P10|"
        events = _random_events(rng, people, int(rng.integers(20, 1500)), T0, 12 if trial % 2 else 2)
        sessions = graph.session_frame(events)
        full_parts, full_seq = graph.event_parts(sessions), graph.sequence_signals(sessions, categorical=True)
        ranked = sorted(set(events["person_id"]), key=lambda p: f"{p}|")
        n_buckets = int(rng.integers(1, 6))
        parts, seqs = [], []
        for b in range(n_buckets):
            mine = set(ranked[b * len(ranked) // n_buckets : (b + 1) * len(ranked) // n_buckets])
            s = graph.session_frame(events[events["person_id"].isin(mine)])
            parts.append(graph.event_parts(s))
            seqs.append(graph.sequence_signals(s, categorical=True))
        combined = graph.combine_event_parts(parts)
        for name in ("did", "types", "nxt", "co"):
            pd.testing.assert_frame_equal(getattr(combined, name), getattr(full_parts, name))
        seq = graph.concat_sequence_signals(seqs, ordered=True)
        pd.testing.assert_frame_equal(seq.astype(object), full_seq.astype(object))
        pd.testing.assert_frame_equal(graph.concat_sequence_signals(seqs[::-1]).astype(object), full_seq.astype(object))  # any part order, unordered
        persons = pd.Index(people + ["nobody"], name="person_id")
        sparse_matrix = graph.signal_sparse(full_seq, persons, 2, 0.9)
        dense = graph.signal_matrix(full_seq.astype(object), persons, 2, 0.9)
        pd.testing.assert_frame_equal(sparse_matrix.to_frame(), _reference_matrix(full_seq.astype(object), persons, 2, 0.9))
        pd.testing.assert_frame_equal(dense, sparse_matrix.to_frame())
        churned = pd.Series([float(i % 2) if i % 5 else np.nan for i in range(len(persons))], index=persons)
        mix = pd.DataFrame({"person_id": people[::3], "intent_0": 1.0, "intent_1": 0.5})
        pd.testing.assert_frame_equal(graph.graph_features(sparse_matrix, mix, churned, T0), graph.graph_features(dense, mix, churned, T0))


def test_the_graph_stage_builds_sessions_bucket_by_bucket_from_the_lake(tmp_path):
    """insights._behaviour_by_bucket on a small lake (two event sources, two batches, a record
    without a lake row, a lake row without a record, a source without session ids): with many
    buckets, the same behaviour part and sequence signals as the whole frame (_kind_rows)."""
    import pyarrow as pa

    from personaops import insights

    ws = Workspace(tmp_path)
    rng = np.random.default_rng(3)
    people = [f"P{i}" for i in range(40)]
    records, batches = [], {"app": ["b1", "b2"], "web": ["w1"], "crm": ["c1"]}
    for source, ids in batches.items():
        for b in ids:
            ev = _random_events(rng, people, 400, T0, 9)
            ev["source_key"] = [f"{source}-{b}-{i}" for i in range(len(ev))]
            person = ev.pop("person_id")
            if source == "web":
                ev = ev.drop(columns="session_id")
            folder = ws.lake / source / f"batch={b}"
            folder.mkdir(parents=True)
            ev.iloc[1:].to_parquet(folder / "part-0.parquet", index=False)  # row 0: a record whose lake row is gone
            records.append(pd.DataFrame({"source": source, "source_key": ev["source_key"].iloc[:-1], "person_id": person.iloc[:-1], "_batch_id": b}))  # last row: no record
    records = pa.Table.from_pandas(pd.concat(records, ignore_index=True), preserve_index=False)
    kinds = {"app": "events", "web": "events", "crm": "crm"}
    whole = insights._sessions(graph, insights._kind_rows(ws, records, batches, kinds, "events", ("event_time", "event_type", "session_id")))
    expected_parts, expected_seq = graph.event_parts(whole), graph.sequence_signals(whole, categorical=True)
    for rows in (10**9, 300, 97):
        parts, seq = insights._behaviour_by_bucket(ws, records, batches, kinds, bucket_rows=rows)
        for name in ("did", "types", "nxt", "co"):
            pd.testing.assert_frame_equal(getattr(parts, name), getattr(expected_parts, name))
        pd.testing.assert_frame_equal(seq.astype(object), expected_seq.astype(object))
    assert not list(tmp_path.glob("graph-buckets-*"))  # spill files removed


def test_the_graph_written_in_row_groups_reads_back_as_written_whole(tmp_path):
    """write_graph with small row groups: the same node and edge tables as one to_parquet call."""
    nodes, edges = graph.build_graph(*_inputs())
    assert len(edges) > 4
    whole = graph.write_graph(Workspace(tmp_path / "a"), "r1", nodes, edges)
    grouped = graph.write_graph(Workspace(tmp_path / "b"), "r1", nodes, edges, rows_per_group=3)
    for name in ("nodes", "edges"):
        pd.testing.assert_frame_equal(pd.read_parquet(grouped[name]), pd.read_parquet(whole[name]))
        pd.testing.assert_frame_equal(pd.read_parquet(grouped[name]), nodes if name == "nodes" else edges)
