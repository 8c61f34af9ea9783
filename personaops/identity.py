"""Identity resolution: deterministic rules, then a Splink pass, into stable person ids.

Pass 1 (rules): records are linked when they share a normalised customer id, e-mail, phone,
account id or (unshared) device id — per source, only the kinds `source_link_keys` allows it;
junk values never link, and a device seen with several
customer ids is a shared device and never links customers. Connected components are the
candidate persons; a component that breaks a guard (more distinct values of a key kind than
`max_values_per_person` allows, or both ends of a rejected review pair) is rebuilt link by link
in rule-priority order, refusing each link that would break the guard.

Pass 2 (Splink): one representative row per cluster goes to a Fellegi-Sunter model
(`personaops.matching`); pairs at or above `match_probability_threshold` that involve a cluster
the rules left as a single record merge under the same guards; pairs in the grey band below it
go to the review queue, and reviewers' decisions (accept = always merge, reject = never merge)
are honoured by every later run.

Person ids: a cluster keeps the id of the previous run's person that most of its records
belonged to; a cluster with no history gets an id derived from its anchor key (smallest
customer id, else e-mail, ... else the record itself), so a fresh re-run reproduces the ids.
A cluster uniting several old persons is a merge event, an old person spread over several
clusters a split event; both carry their evidence (the graph edges or refused links).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from personaops.config import IdentityConfig

RECORD_COLUMNS = ["source", "source_key", "_batch_id", "_row_number", "_row_hash", "person_id", "linked_by"]
EDGE_COLUMNS = ["record_l", "record_r", "method", "rule", "key", "match_probability", "match_weight", "agreed"]
REVIEW_COLUMNS = ["pair_id", "record_l", "record_r", "match_probability", "match_weight", "agreed", "person_l", "person_r", "values_l", "values_r"]


def normalise_email(s: pd.Series) -> pd.Series:
    return s.str.strip().str.lower()


def normalise_phone(s: pd.Series) -> pd.Series:
    digits = s.str.replace(r"\D", "", regex=True)
    # North-American style numbers keep their last 10 digits (drops a leading country code 1).
    return digits.where(digits.str.len() != 11, digits.str[-10:]).where(digits.str.len() >= 7)


def normalise_id(s: pd.Series) -> pd.Series:
    return s.str.strip().str.lower()


def normalise_text(s: pd.Series) -> pd.Series:
    return s.str.strip().str.lower().str.replace(r"\s+", " ", regex=True)


NORMALISERS = {
    "customer_id": normalise_id,
    "email": normalise_email,
    "phone": normalise_phone,
    "account_id": normalise_id,
    "device_id": normalise_id,
}


@dataclass
class IdentityResult:
    records: pd.DataFrame  # RECORD_COLUMNS
    stats: dict[str, int]
    edges: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=EDGE_COLUMNS))  # the identity graph's evidence
    events: list[dict] = field(default_factory=list)  # merge / split events against the previous run
    review: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=REVIEW_COLUMNS))  # undecided grey-band pairs


def person_id_for(anchor: str) -> str:
    return "P" + hashlib.sha1(anchor.encode("utf-8")).hexdigest()[:12]


def pair_id_for(record_a: str, record_b: str) -> str:
    """Order-free id of a record pair, as shown in the review queue."""
    lo, hi = sorted((record_a, record_b))
    return "R" + hashlib.sha1(f"{lo}\n{hi}".encode("utf-8")).hexdigest()[:10]


def record_ids(frame: pd.DataFrame) -> pd.Series:
    return frame["source"].astype(str) + ":" + frame["source_key"].astype(str)


def _keys(records: pd.DataFrame, cfg: IdentityConfig) -> tuple[pd.DataFrame, int]:
    """Long table (record_idx, key_kind, key) of usable normalised link keys."""
    junk = {j.strip().lower() for j in cfg.junk_values}
    parts = []
    for kind in cfg.link_keys:
        if kind not in records.columns:
            continue
        values = records[kind].dropna().astype(str)
        if cfg.source_link_keys:  # per-source rules: a source may be barred from linking on this kind
            allowed = [src for src in pd.unique(records["source"]) if cfg.source_may_link_on(src, kind)]
            values = values[records.loc[values.index, "source"].isin(allowed)]
        norm = NORMALISERS[kind](values).dropna()
        norm = norm[~norm.isin(junk) & (norm != "")]
        parts.append(pd.DataFrame({"record_idx": norm.index.to_numpy(), "kind": kind, "key": norm.to_numpy()}))
    keys = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["record_idx", "kind", "key"])
    keys["record_idx"] = keys["record_idx"].astype(np.int64)
    shared_devices = 0
    if "device_id" in set(keys["kind"]) and "customer_id" in set(keys["kind"]):
        dev = keys[keys.kind == "device_id"][["record_idx", "key"]]
        cust = keys[keys.kind == "customer_id"][["record_idx", "key"]]
        pairs = dev.merge(cust, on="record_idx", suffixes=("_dev", "_cust")).drop_duplicates(["key_dev", "key_cust"])
        per_device = pairs.groupby("key_dev").size()
        shared = set(per_device[per_device > cfg.max_persons_per_device].index)
        shared_devices = len(shared)
        # A shared device never ties customers together, but its anonymous records stay one
        # device-level person rather than one person per record.
        identified = set(cust["record_idx"])
        keys = keys[~((keys.kind == "device_id") & keys.key.isin(shared) & keys.record_idx.isin(identified))]
    return keys.reset_index(drop=True), shared_devices


class _GuardedUnion:
    """Union-find whose unions are refused when they would break a guard: more distinct values
    of a key kind than its cap, or a rejected pair ending up in one person."""

    def __init__(self, n: int, caps: dict[str, int], values: dict[int, dict[str, set]], cannot: dict[int, set[int]]):
        self.parent = list(range(n))
        self.caps = caps
        self.values = values  # root -> kind -> distinct values (only elements that have any)
        self.cannot = {k: set(v) for k, v in cannot.items()}  # root -> roots it must never join
        self.constrained = {k: {k} for k in cannot}  # root -> its members that carry a constraint

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int, force: bool = False) -> str | None:
        """Join the sets of a and b; return None on success (or already joined), else why not."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return None
        forbidden_a = {self.find(x) for x in self.cannot.get(ra, ())}
        if rb in forbidden_a:
            return "rejected in review"
        va, vb = self.values.get(ra, {}), self.values.get(rb, {})
        merged = {k: va.get(k, set()) | vb.get(k, set()) for k in set(va) | set(vb)}
        if not force:
            for kind, vals in merged.items():
                cap = self.caps.get(kind)
                if cap is not None and len(vals) > cap:
                    return f"cap: more than {cap} {kind} value(s) per person"
        self.parent[rb] = ra
        if merged:
            self.values[ra] = merged
        self.values.pop(rb, None)
        if rb in self.cannot or ra in self.cannot:
            self.cannot[ra] = self.cannot.get(ra, set()) | self.cannot.pop(rb, set())
            self.constrained[ra] = self.constrained.get(ra, set()) | self.constrained.pop(rb, set())
        return None


def _rule_edges(keys: pd.DataFrame) -> pd.DataFrame:
    """Star edges: every record holding a shared key links to that key's first record."""
    keys = keys.sort_values(["node", "record_idx"])
    first = keys.groupby("node")["record_idx"].transform("first")
    e = keys[keys["record_idx"] != first]
    return pd.DataFrame({"l": first[e.index].to_numpy(), "r": e["record_idx"].to_numpy(), "rule": e["kind"].to_numpy(), "key": e["key"].to_numpy()})


def _deterministic(n: int, keys: pd.DataFrame, cfg: IdentityConfig, cannot: dict[int, set[int]]) -> tuple[np.ndarray, pd.DataFrame, list[dict]]:
    """(cluster label per record, rule edges used, refused links) of the rule pass."""
    codes, uniques = pd.factorize(keys["node"])
    graph = coo_matrix((np.ones(len(keys)), (keys["record_idx"].to_numpy(dtype=np.int64), n + codes)), shape=(n + len(uniques),) * 2)
    _, labels = connected_components(graph, directed=False)
    labels = labels[:n].copy()
    keys = keys.assign(component=labels[keys["record_idx"].to_numpy()])

    distinct = keys.groupby(["component", "kind"])["key"].nunique().reset_index()
    distinct["cap"] = distinct["kind"].map(cfg.max_values_per_person)
    broken = set(distinct.loc[distinct["cap"].notna() & (distinct["key"] > distinct["cap"]), "component"])
    for a, partners in cannot.items():
        broken |= {labels[a]} & {labels[b] for b in partners}
    fast = keys[~keys["component"].isin(broken)]
    edges = [_rule_edges(fast)]
    refused: list[dict] = []
    if broken:
        slow = keys[keys["component"].isin(broken)]
        members = np.sort(slow["record_idx"].unique())
        local = {int(r): i for i, r in enumerate(members)}
        values: dict[int, dict[str, set]] = {}
        for r, kind, key in zip(slow["record_idx"], slow["kind"], slow["key"]):
            values.setdefault(local[r], {}).setdefault(kind, set()).add(key)
        local_cannot = {local[a]: {local[b] for b in bs if b in local} for a, bs in cannot.items() if a in local}
        uf = _GuardedUnion(len(members), cfg.max_values_per_person, values, local_cannot)
        priority = {kind: i for i, kind in enumerate(cfg.link_keys)}
        slow = slow.assign(priority=slow["kind"].map(priority)).sort_values(["priority", "key", "record_idx"])
        used = []
        for (_, kind, key), group in slow.groupby(["priority", "kind", "key"], sort=False):
            recs = group["record_idx"].tolist()
            for r in recs[1:]:
                reason = uf.union(local[recs[0]], local[r])
                if reason is None:
                    used.append((recs[0], r, kind, key))
                else:
                    refused.append({"record_l": int(recs[0]), "record_r": int(r), "rule": kind, "reason": reason})
        edges.append(pd.DataFrame(used, columns=["l", "r", "rule", "key"]))
        roots = np.array([uf.find(i) for i in range(len(members))])
        # Fresh labels beyond the existing ones so rebuilt pieces never collide with other clusters.
        labels[members] = labels.max() + 1 + roots
    return labels, pd.concat(edges, ignore_index=True), refused


def _entities(records: pd.DataFrame, labels: np.ndarray, cfg: IdentityConfig) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    """(one row per cluster with its representative attribute values, each cluster's representative
    record, distinct record-level attribute rows to train the model on)."""
    from personaops.matching import MATCH_ATTRIBUTES

    junk = {j.strip().lower() for j in cfg.junk_values}
    frame = pd.DataFrame({"entity": labels})
    for col in MATCH_ATTRIBUTES:
        # Every usable device already linked in the rule pass; what is left are shared devices,
        # which must not link people by another route.
        if col not in records.columns or (col == "device_id" and col in cfg.link_keys):
            continue
        raw = records[col].astype("string")
        if col == "email":
            norm = normalise_email(raw)
        elif col == "phone":
            norm = normalise_phone(raw)
        else:
            norm = normalise_text(raw)
        frame[col] = norm.where(~norm.isin(junk) & (norm != ""))
    attrs = [c for c in frame.columns if c != "entity"]
    filled = frame[attrs].notna().sum(axis=1) if attrs else pd.Series(0, index=frame.index)
    # The representative record is the cluster's most complete one (first on ties).
    order = frame.assign(_filled=-filled.to_numpy(), _pos=np.arange(len(frame))).sort_values(["entity", "_filled", "_pos"])
    representative = order.drop_duplicates("entity").set_index("entity")["_pos"]
    entities = frame.groupby("entity", sort=True)[attrs].first().reset_index() if attrs else frame.drop_duplicates("entity")
    training = frame.loc[filled.to_numpy() > 0, attrs].drop_duplicates()
    if len(training) > cfg.max_training_rows:
        training = training.sample(cfg.max_training_rows, random_state=cfg.seed)
    training = training.reset_index(drop=True).rename_axis("entity").reset_index()
    return entities, representative, training


def _assign_ids(labels: np.ndarray, anchors: pd.Series, rids: pd.Series, previous: pd.DataFrame | None) -> tuple[np.ndarray, list[dict]]:
    """Person id per record, plus merge/split events against the previous run's map."""
    anchor_ids = {lab: person_id_for(a) for lab, a in anchors.items()}
    if previous is None or previous.empty:
        return np.array([anchor_ids[lab] for lab in labels], dtype=object), []
    old = rids.map(pd.Series(previous["person_id"].to_numpy(), index=record_ids(previous)))
    counts = pd.DataFrame({"label": labels, "old": old.to_numpy()}).dropna().value_counts().reset_index(name="n")
    # Most records first; on a tie the id the cluster's anchor key would give, then the smallest.
    counts["anchored"] = counts["old"] == counts["label"].map(anchor_ids)
    counts = counts.sort_values(["n", "anchored", "old"], ascending=[False, False, True])
    assigned: dict[int, str] = {}
    used: set[str] = set()
    for lab, o in zip(counts["label"], counts["old"]):
        if lab not in assigned and o not in used:
            assigned[lab], _ = o, used.add(o)
    taken = set(previous["person_id"]) | used
    for lab in pd.unique(labels):
        if lab in assigned:
            continue
        pid, k = anchor_ids[lab], 0
        while pid in taken:  # never hand out an id a person of the previous run holds
            k += 1
            pid = person_id_for(f"{anchors[lab]}#{k}")
        assigned[lab] = pid
        taken.add(pid)
    events = []
    for lab, group in counts.groupby("label"):
        if len(group) > 1:
            events.append({"event": "merge", "old_ids": sorted(group["old"]), "new_ids": [assigned[lab]], "label": int(lab)})
    for o, group in counts.groupby("old"):
        if len(group) > 1:
            events.append({"event": "split", "old_ids": [o], "new_ids": sorted(assigned[lab] for lab in group["label"]), "label": None})
    return np.array([assigned[lab] for lab in labels], dtype=object), events


def resolve_identities(
    records: pd.DataFrame,
    cfg: IdentityConfig,
    previous: pd.DataFrame | None = None,
    decisions: pd.DataFrame | None = None,
) -> IdentityResult:
    """Link records into persons.

    `records` has source, source_key, lineage and identifier columns (plus any attribute columns
    the probabilistic pass compares); `previous` is the last run's record -> person map (keeps
    ids stable and yields merge/split events); `decisions` holds review decisions (pair_id,
    record_l, record_r, decision = accept | reject; the latest per pair wins).
    """
    records = records.reset_index(drop=True)
    n = len(records)
    rids = record_ids(records)
    position = pd.Series(np.arange(n), index=rids.to_numpy())
    position = position[~position.index.duplicated()]
    accept_pairs, cannot = [], {}
    if decisions is not None and len(decisions):
        latest = decisions.drop_duplicates("pair_id", keep="last")
        for a, b, d in zip(latest["record_l"], latest["record_r"], latest["decision"]):
            if a in position.index and b in position.index:
                ia, ib = int(position[a]), int(position[b])
                if d == "reject":
                    cannot.setdefault(ia, set()).add(ib)
                    cannot.setdefault(ib, set()).add(ia)
                elif d == "accept":
                    accept_pairs.append((ia, ib))

    keys, shared_devices = _keys(records, cfg)
    keys["node"] = keys["kind"] + ":" + keys["key"]
    labels, rule_edges, refused = _deterministic(n, keys, cfg, cannot)

    # --- pass 2: Splink over one representative row per cluster ---------------------------------
    entities, representative, training = _entities(records, labels, cfg)
    sizes = pd.Series(labels).value_counts()
    prob_edges = pd.DataFrame(columns=["l", "r", "match_probability", "match_weight", "agreed", "method"])
    review = pd.DataFrame(columns=["l", "r", "match_probability", "match_weight", "agreed"])
    trained = False
    if cfg.probabilistic:
        from personaops.matching import score_entities

        low = min(cfg.review_probability_min, cfg.match_probability_threshold)
        scored = score_entities(
            entities, training, cfg.min_entities_for_matching, cfg.seed, cfg.u_sampling_max_pairs, low,
            backend=cfg.backend, spark_master=cfg.spark_master, spark_driver_memory=cfg.spark_driver_memory,
            spark_shuffle_partitions=cfg.spark_shuffle_partitions, em_max_iterations=cfg.em_max_iterations,
        )  # fmt: skip
        trained = scored.trained
        pairs = scored.pairs
        # Splink attaches what the rules left alone: a pair needs a single-record cluster on one side.
        single = pairs["entity_l"].map(sizes).eq(1) | pairs["entity_r"].map(sizes).eq(1)
        pairs = pairs[single]
        pairs = pairs.assign(l=pairs["entity_l"].map(representative), r=pairs["entity_r"].map(representative))
        pairs = pairs.sort_values(["match_probability", "l", "r"], ascending=[False, True, True])
        prob_edges = pairs[pairs["match_probability"] >= cfg.match_probability_threshold].assign(method="splink")
        review = pairs[pairs["match_probability"] < cfg.match_probability_threshold]

    # Guarded union of clusters: accepted review pairs (forced), then Splink matches by probability.
    cluster_values: dict[int, dict[str, set]] = {}
    involved = set(prob_edges["l"]).union(prob_edges["r"]).union(*accept_pairs) if len(prob_edges) or accept_pairs else set()
    if involved:
        involved_labels = {int(labels[i]) for i in involved}
        k = keys[np.isin(labels[keys["record_idx"].to_numpy()], list(involved_labels))]
        for r, kind, key in zip(k["record_idx"], k["kind"], k["key"]):
            cluster_values.setdefault(int(labels[r]), {}).setdefault(kind, set()).add(key)
    cluster_cannot: dict[int, set[int]] = {}
    for a, bs in cannot.items():
        cluster_cannot.setdefault(int(labels[a]), set()).update(int(labels[b]) for b in bs)
    uf = _GuardedUnion(int(labels.max()) + 1 if n else 0, cfg.max_values_per_person, cluster_values, cluster_cannot)
    merges = []
    for a, b in accept_pairs:
        if uf.union(int(labels[a]), int(labels[b]), force=True) is None:
            merges.append({"l": a, "r": b, "match_probability": 1.0, "match_weight": np.nan, "agreed": "", "method": "review"})
    for row in prob_edges.itertuples(index=False):
        reason = uf.union(int(labels[row.l]), int(labels[row.r]))
        if reason is None:
            merges.append({"l": row.l, "r": row.r, "match_probability": row.match_probability, "match_weight": row.match_weight, "agreed": row.agreed, "method": "splink"})
        else:
            refused.append({"record_l": int(row.l), "record_r": int(row.r), "rule": "splink", "reason": reason})
    if n:
        labels = np.array([uf.find(int(x)) for x in labels])

    # --- anchors, ids, history ------------------------------------------------------------------
    priority = {kind: i for i, kind in enumerate(cfg.link_keys)}
    keyed = keys.assign(component=labels[keys["record_idx"].to_numpy()], priority=keys["kind"].map(priority))
    anchors = keyed.sort_values(["component", "priority", "key"]).drop_duplicates("component").set_index("component")["node"]
    # Each cluster's smallest record id, by sorting (a string groupby-min runs in Python).
    own = pd.DataFrame({"label": labels, "own": ("record:" + rids).to_numpy()}).sort_values(["label", "own"]).drop_duplicates("label").set_index("label")["own"]
    joined = own.to_frame("own").join(anchors)
    anchors = joined["node"].where(joined["node"].notna(), joined["own"])
    person, events = _assign_ids(labels, anchors, rids, previous)

    rid = rids.to_numpy()
    edges = pd.concat(
        [
            pd.DataFrame({"record_l": rid[rule_edges["l"].to_numpy(dtype=np.int64)], "record_r": rid[rule_edges["r"].to_numpy(dtype=np.int64)],
                          "method": "rule", "rule": rule_edges["rule"].to_numpy(), "key": rule_edges["key"].to_numpy(),
                          "match_probability": 1.0, "match_weight": np.nan, "agreed": rule_edges["rule"].to_numpy()}),
            pd.DataFrame({"record_l": [rid[m["l"]] for m in merges], "record_r": [rid[m["r"]] for m in merges],
                          "method": [m["method"] for m in merges], "rule": "", "key": "",
                          "match_probability": [float(m["match_probability"]) for m in merges],
                          "match_weight": [float(m["match_weight"]) for m in merges], "agreed": [m["agreed"] for m in merges]}),
        ],
        ignore_index=True,
    )[EDGE_COLUMNS]  # fmt: skip

    # What linked each record: the highest-priority evidence on an edge that touches it.
    rank = {**priority, "review": len(priority), "splink": len(priority) + 1}
    touch = pd.concat([edges[["record_l", "method", "rule"]].rename(columns={"record_l": "record"}), edges[["record_r", "method", "rule"]].rename(columns={"record_r": "record"})])
    touch["by"] = touch["rule"].where(touch["method"] == "rule", touch["method"])
    touch["rank"] = touch["by"].map(rank)
    best = touch.sort_values(["record", "rank"]).drop_duplicates("record").set_index("record")["by"]
    out = records[["source", "source_key", "_batch_id", "_row_number", "_row_hash"]].copy()
    out["person_id"] = person
    out["linked_by"] = rids.map(best).fillna("unlinked").to_numpy()

    pid_of = dict(zip(rid, person))
    for e in events:  # evidence: the edges joining the old persons (merge) or the refused links (split)
        label = e.pop("label")
        if e["event"] == "merge":
            members = set(rid[labels == label])
            crossing = edges[edges["record_l"].isin(members) & edges["record_r"].isin(members)]
            old_of = rids.map(pd.Series(previous["person_id"].to_numpy(), index=record_ids(previous)))
            old_map = dict(zip(rid, old_of))
            crossing = crossing[[old_map.get(a) != old_map.get(b) for a, b in zip(crossing["record_l"], crossing["record_r"])]]
            e["evidence"] = crossing.head(20).drop(columns=["key"]).to_dict("records")
        else:
            pids = set(e["new_ids"])
            e["evidence"] = [
                {"record_l": rid[x["record_l"]], "record_r": rid[x["record_r"]], "rule": x["rule"], "reason": x["reason"]}
                for x in refused
                if pid_of[rid[x["record_l"]]] in pids and pid_of[rid[x["record_r"]]] in pids
            ][:20] or [{"reason": "the evidence that joined these records is gone (changed data or a review decision)"}]

    review_out = pd.DataFrame(columns=REVIEW_COLUMNS)
    if len(review):
        decided = set(decisions["pair_id"]) if decisions is not None and len(decisions) else set()
        attrs = [c for c in entities.columns if c != "entity"]
        values = entities.set_index("entity")[attrs]
        rows = []
        for row in review.itertuples(index=False):
            a, b = rid[row.l], rid[row.r]
            pair = pair_id_for(a, b)
            if pair in decided or pid_of[a] == pid_of[b]:
                continue
            va, vb = values.loc[row.entity_l].dropna().to_dict(), values.loc[row.entity_r].dropna().to_dict()
            rows.append([pair, a, b, float(row.match_probability), float(row.match_weight), row.agreed, pid_of[a], pid_of[b], str(va), str(vb)])
        review_out = pd.DataFrame(rows, columns=REVIEW_COLUMNS)

    stats = {
        "records": n,
        "persons": int(out["person_id"].nunique()),
        "unlinked_records": int((out["linked_by"] == "unlinked").sum()),
        "shared_devices_ignored": shared_devices,
        "entities_matched": int(len(entities)) if trained else 0,
        "probabilistic_links": int(sum(m["method"] == "splink" for m in merges)),
        "review_links": int(sum(m["method"] == "review" for m in merges)),
        "refused_links": len(refused),
        "review_queue": int(len(review_out)),
        "merges": sum(e["event"] == "merge" for e in events),
        "splits": sum(e["event"] == "split" for e in events),
    }
    return IdentityResult(records=out, stats=stats, edges=edges, events=events, review=review_out)
