"""The memory-lean rule pass (issue #10) gives what the earlier per-row formulation gave.

The old code is restated here as the reference: per-row normalisation of every link key, the
star edges by a sorted copy and a groupby, the anchors by sorting a copy of the key rows.
"""

import numpy as np
import pandas as pd
import pytest

from personaops.config import IdentityConfig
from personaops.identity import NORMALISERS, _anchors, _keys, _RecordIds, _rule_edges


def _records(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    emails = np.array([" Ana@X.com", "ana@x.com", "bob@y.org", "unknown", "", None, "TEST@test.com", "c.d@z.net "], dtype=object)
    phones = np.array(["+1 (555) 010-2000", "555-010-2000", "12345", None, "0000000000", "44 20 7946 0000"], dtype=object)
    return pd.DataFrame({
        "source": rng.choice(["crm", "events", "tickets"], n),
        "source_key": [f"k{i}" for i in range(n)],
        "customer_id": rng.choice(np.array(["C1", " c1", "C2", None, "n/a", "C3"], dtype=object), n),
        "email": rng.choice(emails, n),
        "phone": rng.choice(phones, n),
        "device_id": rng.choice(np.array(["D1", "d2", None, "D3"], dtype=object), n),
    })  # fmt: skip


def _old_keys(records: pd.DataFrame, cfg: IdentityConfig) -> pd.DataFrame:
    junk = {j.strip().lower() for j in cfg.junk_values}
    parts = []
    for kind in cfg.link_keys:
        if kind not in records.columns:
            continue
        values = records[kind].dropna().astype(str)
        if cfg.source_link_keys:
            allowed = [src for src in pd.unique(records["source"]) if cfg.source_may_link_on(src, kind)]
            values = values[records.loc[values.index, "source"].isin(allowed)]
        norm = NORMALISERS[kind](values).dropna()
        norm = norm[~norm.isin(junk) & (norm != "")]
        parts.append(pd.DataFrame({"record_idx": norm.index.to_numpy(), "kind": kind, "key": norm.to_numpy()}))
    keys = pd.concat(parts, ignore_index=True)
    keys["record_idx"] = keys["record_idx"].astype(np.int64)
    keys["node"] = keys["kind"] + ":" + keys["key"]
    return keys


def test_keys_match_per_row_normalisation_and_share_strings():
    records = _records(3000, 1)
    for cfg in (IdentityConfig(max_persons_per_device=1000), IdentityConfig(max_persons_per_device=1000, source_link_keys={"tickets": ["email"]})):
        keys, _ = _keys(records, cfg)
        pd.testing.assert_frame_equal(keys, _old_keys(records, cfg), check_exact=True)
        # one key and node string object per distinct raw value, not one per record
        raw_values = sum(records[k].nunique() for k in cfg.link_keys if k in records.columns)
        assert len({id(k) for k in keys["key"]}) <= raw_values < len(keys) // 100
        assert len({id(k) for k in keys["node"]}) <= raw_values


def test_rule_edges_and_anchors_match_the_sorted_copies():
    records = _records(2000, 2)
    cfg = IdentityConfig(max_persons_per_device=1000)
    keys, _ = _keys(records, cfg)
    codes, _ = pd.factorize(keys["node"], sort=True)

    old = keys.sort_values(["node", "record_idx"])
    first = old.groupby("node")["record_idx"].transform("first")
    e = old[old["record_idx"] != first]
    expected = pd.DataFrame({"l": first[e.index].to_numpy(), "r": e["record_idx"].to_numpy(), "rule": e["kind"].to_numpy(), "key": e["key"].to_numpy()})
    got = _rule_edges(keys, codes)
    # compact columns (int32 ends, Categorical rule and key), the same values
    assert got["l"].dtype == np.int32 and isinstance(got["rule"].dtype, pd.CategoricalDtype) and isinstance(got["key"].dtype, pd.CategoricalDtype)
    pd.testing.assert_frame_equal(got.astype({"l": np.int64, "r": np.int64, "rule": object, "key": object}), expected, check_exact=True)
    assert len(got) > 1000  # the data links plenty of records

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 700, len(records))  # arbitrary clusters, some without any key
    priority = {kind: i for i, kind in enumerate(cfg.link_keys)}
    rid = ("crm:" + records["source_key"]).to_numpy()
    keyed = keys.assign(component=labels[keys["record_idx"].to_numpy()], priority=keys["kind"].map(priority))
    anchors = keyed.sort_values(["component", "priority", "key"]).drop_duplicates("component").set_index("component")["node"]
    own = pd.DataFrame({"label": labels, "own": ("record:" + pd.Series(rid)).to_numpy()}).sort_values(["label", "own"]).drop_duplicates("label").set_index("label")["own"]
    joined = own.to_frame("own").join(anchors)
    expected_anchors = joined["node"].where(joined["node"].notna(), joined["own"])
    got_anchors = _anchors(keys, labels, priority, _RecordIds(pd.Series("crm", index=records.index), records["source_key"]))
    assert got_anchors.index.tolist() == expected_anchors.index.tolist()
    assert got_anchors.tolist() == expected_anchors.tolist()
    assert any(a.startswith("record:") for a in got_anchors)  # both branches ran


def _old_broken(keys: pd.DataFrame, labels: np.ndarray, cfg: IdentityConfig) -> set:
    """The capped components as the frame-based check found them (before session 9)."""
    component = labels[keys["record_idx"].to_numpy()]
    codes, _ = pd.factorize(keys["node"], sort=True)
    kind_codes, kinds = pd.factorize(keys["kind"])
    caps = np.array([cfg.max_values_per_person.get(k, -1) for k in kinds], dtype=np.int64)
    capped = caps[kind_codes] >= 0
    distinct = pd.DataFrame({"component": component[capped], "kind": kind_codes[capped], "key": codes[capped]}).drop_duplicates()
    per = distinct.groupby(["component", "kind"]).size().reset_index(name="n")
    return set(per.loc[per["n"].to_numpy() > caps[per["kind"].to_numpy()], "component"].tolist())


@pytest.mark.parametrize("caps", [{"customer_id": 1, "email": 5, "phone": 5, "account_id": 1, "device_id": 10}, {"customer_id": 2, "email": 1}])
def test_capped_components_found_on_sorted_codes_match_the_frame_check(monkeypatch, caps):
    from personaops import identity

    records = _records(3000, 7)
    cfg = IdentityConfig(max_persons_per_device=1000, max_values_per_person=caps)
    keys, _ = _keys(records, cfg)
    seen = {}
    real_rule_edges = identity._rule_edges

    def spy(keys_, node_rank, rows=None, texts=None):  # the rows the broken components leave to the slow path
        seen["rows"] = rows
        return real_rule_edges(keys_, node_rank, rows, texts)

    monkeypatch.setattr(identity, "_rule_edges", spy)
    labels, edges, refused = identity._deterministic(len(records), keys, cfg, {})
    # the components before the rebuild: the rule graph's connected components
    codes, uniques = pd.factorize(keys["node"], sort=True)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(records)
    graph = coo_matrix((np.ones(len(keys)), (keys["record_idx"].to_numpy(), n + codes)), shape=(n + len(uniques),) * 2)
    components = connected_components(graph, directed=False)[1][:n]
    broken = _old_broken(keys, components, cfg)
    assert broken and refused  # the data breaks caps, so the slow path ran
    expected_rows = ~np.isin(components[keys["record_idx"].to_numpy()], list(broken))
    np.testing.assert_array_equal(seen["rows"], expected_rows)
