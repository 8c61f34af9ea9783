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

import gc
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
    index: "IdentityIndex | None" = None  # what the next run needs to link only its new records
    upgrades: pd.DataFrame | None = None  # incremental runs: earlier records (record, by) whose evidence a new link improves


@dataclass
class IdentityIndex:
    """The state an incremental run links new records against (`resolve_incremental`).

    keys: one row per (link key, rule cluster) of the records: node_hash (uint64 hash of
    'kind:normalised value'), kind, entity (the rule cluster), person_id, first_record (the key's
    first record, the far end of a new record's rule edge). devices: the distinct (device,
    customer id) pairs as hashes, to tell when a new record makes a device shared. entities: one
    row per rule cluster with its size, person and the attribute values Splink compares. model:
    the trained Splink model (None when no probabilistic pass ran).
    """

    keys: pd.DataFrame
    devices: pd.DataFrame
    entities: pd.DataFrame
    model: dict | None
    batches: dict | None = None  # source -> batch id -> sha256 of the lake batches the index was built from (identity_store.batch_digests)


def person_id_for(anchor: str) -> str:
    return "P" + hashlib.sha1(anchor.encode("utf-8")).hexdigest()[:12]


def pair_id_for(record_a: str, record_b: str) -> str:
    """Order-free id of a record pair, as shown in the review queue."""
    lo, hi = sorted((record_a, record_b))
    return "R" + hashlib.sha1(f"{lo}\n{hi}".encode("utf-8")).hexdigest()[:10]


def record_ids(frame: pd.DataFrame) -> pd.Series:
    return frame["source"].astype(str) + ":" + frame["source_key"].astype(str)


class _RecordIds:
    """Record ids ('source:key', as `record_ids` gives them) of record positions, built on demand:
    a source code per record and the keys as one Arrow string array, not an id string per record
    (37.7M records at 1,000,000 people)."""

    def __init__(self, source: pd.Series, source_key):
        """`source_key`: a Series, or Arrow tables (LINEAGE, in record order) to take it from."""
        import pyarrow as pa

        # a Categorical (identity_store.lake_records) by its codes, no string reference per record
        codes, names = pd.factorize(source if isinstance(source.dtype, pd.CategoricalDtype) else source.astype(str).to_numpy(dtype=object))
        self.codes = codes.astype(np.int32)
        self.names = np.asarray([str(x) for x in names], dtype=object)
        if isinstance(source_key, pd.Series):
            self.keys = pa.array(source_key.astype(str).to_numpy(dtype=object), type=pa.large_string())
        else:
            chunks = [t["source_key"].cast(pa.large_string()).combine_chunks() for t in source_key]
            self.keys = pa.concat_arrays(chunks) if chunks else pa.array([], pa.large_string())
        if len(self.keys) != len(self.codes):
            raise ValueError(f"the lineage has {len(self.keys):,} records, the resolve {len(self.codes):,}")

    def __len__(self) -> int:
        return len(self.codes)

    def at(self, positions) -> np.ndarray:
        """The record ids of `positions` (object array of str)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        pos = np.asarray(positions, dtype=np.int64)
        if not len(pos):
            return np.array([], dtype=object)
        src = pa.array(self.names[self.codes[pos]], type=pa.large_string())
        return pc.binary_join_element_wise(src, self.keys.take(pa.array(pos)), pa.scalar(":", pa.large_string())).to_numpy(zero_copy_only=False).astype(object)

    def arrow(self, positions):
        """The record ids of `positions` as an Arrow string array (no Python string per id)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        pos = pa.array(np.asarray(positions, dtype=np.int64))
        src = pa.DictionaryArray.from_arrays(pa.array(self.codes).take(pos), pa.array(list(self.names), pa.large_string())).cast(pa.large_string())
        return pc.binary_join_element_wise(src, self.keys.take(pos), pa.scalar(":", pa.large_string())).cast(pa.string())

    def __getitem__(self, position: int) -> str:
        return str(self.at([int(position)])[0])

    def find(self, ids) -> dict[str, int]:
        """{record id: its first position} of the given ids that name a record."""
        import pyarrow as pa
        import pyarrow.compute as pc

        ids = set(ids)
        tails = {i.split(":", k)[k] for i in ids for k in range(1, i.count(":") + 1)}
        if not tails:
            return {}
        pos = np.flatnonzero(pc.is_in(self.keys, value_set=pa.array(sorted(tails), pa.large_string())).to_numpy(zero_copy_only=False))
        found = {}
        for p, rid in zip(pos, self.at(pos)):
            if rid in ids and rid not in found:
                found[rid] = int(p)
        return found


def _factorize(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes, distinct values as an object array) of a record column, in order of first
    appearance, missing values -1: a Categorical column (identity_store.lake_records) by its
    codes, without an object array of one reference per record; the same codes and values as
    its object column gives."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes, uniques = pd.factorize(column)
        return codes, np.asarray(uniques.astype(object), dtype=object)
    return pd.factorize(column.to_numpy(dtype=object))


def _keys(records: pd.DataFrame, cfg: IdentityConfig) -> tuple[pd.DataFrame, int]:
    """Long table (record_idx, kind, key, node = 'kind:key') of usable normalised link keys.

    Each distinct raw value is normalised once and every record holding it points at the same
    key and node string objects: a key is shared by tens of records (a person's events), so at
    100,000 people this holds a few hundred thousand strings instead of one per record and key.
    The rows are gathered as integer arrays per kind (record positions, value codes) and the
    table is built once, after the shared-device filter: no per-kind frames, concatenated and
    filtered copies of them (37.7M records at 1,000,000 people).
    """
    junk = {j.strip().lower() for j in cfg.junk_values}
    n = len(records)
    source_codes, source_names = pd.factorize(records["source"]) if cfg.source_link_keys else (None, None)
    found = []  # (kind, record positions, codes into the kind's keys, keys, nodes)
    for kind in cfg.link_keys:
        if kind not in records.columns:
            continue
        codes, uniques = _factorize(records[kind])  # missing: -1
        keep = codes >= 0
        if cfg.source_link_keys:  # per-source rules: a source may be barred from linking on this kind
            allowed = [i for i, src in enumerate(source_names) if cfg.source_may_link_on(src, kind)]
            keep &= np.isin(source_codes, allowed)
        norm = NORMALISERS[kind](pd.Series(uniques, dtype=object).astype(str))
        usable = (norm.notna() & ~norm.isin(junk) & (norm != "")).to_numpy()
        if len(usable):
            keep &= usable[np.where(keep, codes, 0)]
        rec = np.flatnonzero(keep)
        key_u = norm.to_numpy(dtype=object)
        node_u = (kind + ":" + norm.where(pd.Series(usable), "")).to_numpy(dtype=object)
        found.append([kind, rec, codes[rec].astype(np.int32), key_u, node_u])  # int32: codes of distinct values
        del codes, keep
    shared_devices = 0
    kinds_present = {f[0] for f in found if len(f[1])}
    if "device_id" in kinds_present and "customer_id" in kinds_present:
        dev = next(f for f in found if f[0] == "device_id")
        cust = next(f for f in found if f[0] == "customer_id")
        # distinct (device key, customer key) pairs of one record, by the keys' values (several raw values can share one)
        dev_key = pd.factorize(dev[3])[0][dev[2]]
        cust_key = pd.factorize(cust[3])[0]
        cust_of = np.full(n, -1, np.int64)
        cust_of[cust[1]] = cust_key[cust[2]]
        c = cust_of[dev[1]]
        both = c >= 0
        pairs = pd.DataFrame({"d": dev_key[both], "c": c[both]}).drop_duplicates()
        per_device = pairs.groupby("d").size()
        shared = per_device.index[per_device > cfg.max_persons_per_device].to_numpy()
        shared_devices = len(shared)
        # A shared device never ties customers together, but its anonymous records stay one
        # device-level person rather than one person per record.
        drop = np.isin(dev_key, shared) & both  # identified: the record has a customer key
        dev[1], dev[2] = dev[1][~drop], dev[2][~drop]
        del dev_key, cust_key, cust_of, c, both, pairs, drop  # a record-sized array each: not held while the table is built
    if not found:
        return pd.DataFrame(columns=["record_idx", "kind", "key", "node"]).astype({"record_idx": np.int64}), shared_devices
    # the columns filled kind by kind into arrays of their final length, and the frame takes them
    # as they are (copy=False: a frame built from a dict otherwise copies its object columns into one block)
    total = sum(len(f[1]) for f in found)
    columns = {"record_idx": np.empty(total, np.int64), "kind": np.empty(total, object), "key": np.empty(total, object), "node": np.empty(total, object)}
    at = 0
    for f in found:
        part = slice(at, at + len(f[1]))
        columns["record_idx"][part] = f[1]
        columns["kind"][part] = f[0]
        columns["key"][part] = f[3][f[2]]
        columns["node"][part] = f[4][f[2]]
        at += len(f[1])
        f[1] = f[2] = None
    return pd.DataFrame(columns, copy=False), shared_devices


def _repeat(value: str, n: int) -> np.ndarray:
    """An object array of `n` references to one string (np.full makes a string object per element)."""
    out = np.empty(n, dtype=object)
    out[:] = value
    return out


def _hash(values) -> np.ndarray:
    """Stable 64-bit hashes of strings (pandas' hash_array with its fixed key): the identity
    index keeps key values only as hashes."""
    return pd.util.hash_array(np.asarray(values, dtype=object))


def _device_pairs(records: pd.DataFrame, cfg: IdentityConfig) -> pd.DataFrame:
    """Distinct (device, customer id) pairs seen on one record, as hashes (dev, cust).

    Each distinct raw value is normalised and hashed once (`pd.factorize`), the records only carry
    its code: no normalised string per record (3.8M records at 100,000 people)."""
    if "device_id" not in records.columns or "customer_id" not in records.columns or "device_id" not in cfg.link_keys or "customer_id" not in cfg.link_keys:
        return pd.DataFrame({"dev": np.array([], np.uint64), "cust": np.array([], np.uint64)})
    junk = {j.strip().lower() for j in cfg.junk_values}

    def coded(kind: str) -> tuple[np.ndarray, np.ndarray]:
        codes, uniques = _factorize(records[kind])  # missing values: -1
        norm = normalise_id(pd.Series(uniques, dtype=object).astype(str))
        usable = (~norm.isin(junk) & (norm != "")).to_numpy()
        if cfg.source_link_keys:  # per-source rules: records of a source barred from this kind carry no value
            allowed = [src for src in pd.unique(records["source"]) if cfg.source_may_link_on(src, kind)]
            codes = np.where(records["source"].isin(allowed).to_numpy(), codes, -1)
        present = codes >= 0
        if len(usable):
            present &= usable[np.where(present, codes, 0)]
        return np.where(present, codes, -1), _hash((kind + ":" + norm).to_numpy()) if len(norm) else np.array([], np.uint64)

    dev, dev_hash = coded("device_id")
    cust, cust_hash = coded("customer_id")
    both = (dev >= 0) & (cust >= 0)
    out = pd.DataFrame({"dev": dev_hash[dev[both]], "cust": cust_hash[cust[both]]})
    return out.drop_duplicates().reset_index(drop=True)


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


def _node_texts(keys: pd.DataFrame, node_rank: np.ndarray) -> tuple[pd.Categorical, pd.Categorical]:
    """(kind, key) of every node code (`node_rank`: the key rows' node codes, 0..nodes-1) as
    Categoricals over the distinct kinds and keys: an edge keeps its node's code and takes its
    rule and key from here, not two string references per edge (64M rule edges at 1,000,000 people)."""
    nodes = int(node_rank.max()) + 1 if len(node_rank) else 0
    kind_codes, kinds = pd.factorize(keys["kind"].to_numpy(dtype=object))
    kind_of = np.zeros(nodes, np.int8 if len(kinds) < 127 else np.int64)
    kind_of[node_rank] = kind_codes
    key_of = np.empty(nodes, dtype=object)
    key_of[node_rank] = keys["key"].to_numpy(dtype=object)  # a node is one kind and one key
    key_codes, key_values = pd.factorize(key_of)  # a key string shared by two kinds: one category
    return pd.Categorical.from_codes(kind_of, categories=pd.Index(kinds, dtype=object)), pd.Categorical.from_codes(key_codes, categories=pd.Index(key_values, dtype=object))


def _text(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes, values) of a text column: a Categorical's codes and categories; an object
    column's values as they are (codes 0..n-1). values[codes[rows]] gives the rows' strings."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.cat.codes.to_numpy(), np.asarray(column.cat.categories, dtype=object)
    return np.arange(len(column)), column.to_numpy(dtype=object)


def _rule_edges(keys: pd.DataFrame, node_rank: np.ndarray, rows: np.ndarray | None = None, texts: tuple | None = None) -> pd.DataFrame:
    """Star edges: every record holding a shared key links to that key's first record.

    `node_rank` orders the rows' nodes as their strings sort; edges come out by node, then record
    (a record holds a node at most once, so only each node's first row is not an edge). `rows`
    (a boolean mask) limits them to those key rows without a copy of the key table. The edges'
    ends are int32 (while the records fit) and their rule and key Categoricals (`_node_texts`, or
    `texts` when given): 13 bytes an edge instead of 32."""
    rec = keys["record_idx"].to_numpy()
    if rows is not None:
        sel = np.flatnonzero(rows)
        order = sel[np.lexsort((rec[sel], node_rank[sel]))]
        del sel
    else:
        order = np.lexsort((rec, node_rank))
    ranks = node_rank[order]
    start = np.ones(len(order), bool)
    start[1:] = ranks[1:] != ranks[:-1]
    del ranks
    rec = rec[order]
    starts = np.flatnonzero(start)
    first = np.repeat(rec[starts], np.diff(np.append(starts, len(order))))
    del starts
    node = node_rank[order[~start]]
    del order
    kind_of, key_of = texts if texts is not None else _node_texts(keys, node_rank)
    ends = np.int32 if not len(rec) or int(rec.max()) < 2**31 else np.int64
    return pd.DataFrame({"l": first[~start].astype(ends), "r": rec[~start].astype(ends),
                         "rule": pd.Categorical.from_codes(kind_of.codes[node], dtype=kind_of.dtype),
                         "key": pd.Categorical.from_codes(key_of.codes[node], dtype=key_of.dtype)}, copy=False)  # fmt: skip


def _deterministic(n: int, keys: pd.DataFrame, cfg: IdentityConfig, cannot: dict[int, set[int]]) -> tuple[np.ndarray, pd.DataFrame, list[dict]]:
    """(cluster label per record, rule edges used, refused links) of the rule pass."""
    codes, uniques = pd.factorize(keys["node"], sort=True)  # sorted: the codes order the nodes as their strings
    index_type = np.int32 if n + len(uniques) < 2**31 else np.int64  # the components depend only on the structure: compact types
    graph = coo_matrix((np.ones(len(keys), np.int8), (keys["record_idx"].to_numpy().astype(index_type), (n + codes).astype(index_type))), shape=(n + len(uniques),) * 2)
    _, labels = connected_components(graph, directed=False)
    labels = labels[:n].copy()
    component = labels[keys["record_idx"].to_numpy()]

    # distinct values per (component, kind): the node codes stand for the key strings (one node per
    # kind and key, and a node's kind is texts' kind of its code). The distinct (component, node)
    # pairs of the capped rows as one sorted int64 array, counted per (component, kind): a frame of
    # three columns and its drop_duplicates were the rule pass's largest transient (+446 MiB at 100,000 people)
    texts = _node_texts(keys, codes)
    kinds = texts[0].categories
    caps = np.array([cfg.max_values_per_person.get(k, -1) for k in kinds], dtype=np.int64)
    node_kind = texts[0].codes.astype(np.int64)
    capped = np.flatnonzero((caps[node_kind] >= 0)[codes]) if len(kinds) else np.array([], np.int64)
    nodes = max(len(uniques), 1)
    pairs = np.unique(component[capped].astype(np.int64) * nodes + codes[capped])
    del capped
    per, count = np.unique((pairs // nodes) * len(kinds) + node_kind[pairs % nodes], return_counts=True) if len(pairs) else (pairs, pairs)
    del pairs
    over = count > caps[per % len(kinds)] if len(per) else np.zeros(0, bool)
    broken = set((per[over] // len(kinds)).tolist())
    del per, count, over
    for a, partners in cannot.items():
        broken |= {labels[a]} & {labels[b] for b in partners}
    in_broken = np.isin(component, list(broken)) if broken else np.zeros(len(keys), bool)
    edges = [_rule_edges(keys, codes, ~in_broken, texts) if broken else _rule_edges(keys, codes, texts=texts)]
    refused: list[dict] = []
    if broken:
        slow = keys[in_broken].assign(component=component[in_broken])
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
        used = pd.DataFrame(used, columns=["l", "r", "rule", "key"])
        edges.append(pd.DataFrame({"l": used["l"].to_numpy(dtype=edges[0]["l"].dtype), "r": used["r"].to_numpy(dtype=edges[0]["r"].dtype),
                                   "rule": pd.Categorical(used["rule"], dtype=texts[0].dtype), "key": pd.Categorical(used["key"], dtype=texts[1].dtype)}))  # fmt: skip
        roots = np.array([uf.find(i) for i in range(len(members))])
        # Fresh labels beyond the existing ones so rebuilt pieces never collide with other clusters.
        labels[members] = labels.max() + 1 + roots
    return labels, (edges[0] if len(edges) == 1 else pd.concat(edges, ignore_index=True)), refused  # one frame: no copy


def _entities(records: pd.DataFrame, labels: np.ndarray, cfg: IdentityConfig) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    """(one row per cluster with its representative attribute values, each cluster's representative
    record, distinct record-level attribute rows to train the model on)."""
    from personaops.matching import MATCH_ATTRIBUTES

    junk = {j.strip().lower() for j in cfg.junk_values}
    # Every usable device already linked in the rule pass; what is left are shared devices,
    # which must not link people by another route.
    cols = [c for c in MATCH_ATTRIBUTES if c in records.columns and not (c == "device_id" and c in cfg.link_keys)]
    if not cols:
        frame = pd.DataFrame({"entity": labels})
        representative = frame.assign(_pos=np.arange(len(frame))).drop_duplicates("entity").set_index("entity")["_pos"].sort_index()
        return frame.drop_duplicates("entity"), representative, frame.iloc[:0, :0].rename_axis("entity").reset_index()
    # Each distinct raw value is normalised once and the records keep a code into the values; the
    # frame of values is built for the records that have any (at 1,000,000 people 4.8M of 37.7M
    # records: the events carry none), the others only count for their cluster's representative.
    filled = np.zeros(len(labels), np.int8)
    coded = []
    for col in cols:
        codes, uniques = _factorize(records[col])  # missing: -1
        raw = pd.Series(uniques, dtype=object).astype("string")
        if col == "email":
            norm = normalise_email(raw)
        elif col == "phone":
            norm = normalise_phone(raw)
        else:
            norm = normalise_text(raw)
        norm = norm.where(~norm.isin(junk) & (norm != ""))
        present = (codes >= 0) & norm.notna().to_numpy()[np.maximum(codes, 0)] if len(norm) else np.zeros(len(codes), bool)
        filled += present
        coded.append((col, np.where(present, codes, -1).astype(np.int32), norm.array))
        del codes, present
    rows = np.flatnonzero(filled > 0)
    frame = pd.DataFrame({"entity": labels[rows]})
    for col, codes, values in coded:
        frame[col] = pd.Series(values.take(codes[rows].astype(np.int64), allow_fill=True), index=frame.index)
    del coded
    attrs = list(cols)
    # The representative record is the cluster's most complete one (first on ties): the first
    # record of every cluster, replaced by the best record with values where it has any.
    uniq, first_pos = np.unique(labels, return_index=True)
    rep = first_pos.astype(np.int64)
    order = np.lexsort((rows, -filled[rows].astype(np.int64), labels[rows]))
    lab = labels[rows][order]
    first = np.ones(len(order), bool)
    first[1:] = lab[1:] != lab[:-1]
    rep[np.searchsorted(uniq, lab[first])] = rows[order[first]]
    representative = pd.Series(rep, index=pd.Index(uniq, name="entity"), name="_pos")
    entities = frame.groupby("entity", sort=True)[attrs].first().reindex(pd.Index(uniq, name="entity")).reset_index()
    training = frame[attrs].drop_duplicates()
    if len(training) > cfg.max_training_rows:
        training = training.sample(cfg.max_training_rows, random_state=cfg.seed)
    training = training.reset_index(drop=True).rename_axis("entity").reset_index()
    return entities, representative, training


def _per_record(labels: np.ndarray, of_label: dict) -> np.ndarray:
    """of_label[label] for every record (object array), one dict lookup per distinct label."""
    uniq, inverse = np.unique(labels, return_inverse=True)
    return np.array([of_label[lab] for lab in uniq.tolist()], dtype=object)[inverse.reshape(-1)] if len(labels) else np.array([], dtype=object)


def _assign_ids(labels: np.ndarray, anchors: pd.Series, rid: "_RecordIds", previous: pd.DataFrame | None) -> tuple[np.ndarray, list[dict]]:
    """Person id per record, plus merge/split events against the previous run's map."""
    anchor_ids = {lab: person_id_for(a) for lab, a in anchors.items()}
    if previous is None or previous.empty:
        return _per_record(labels, anchor_ids), []
    old = _old_persons(rid, previous)
    counts = pd.DataFrame({"label": labels, "old": old}).dropna().value_counts().reset_index(name="n")
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
    return _per_record(labels, assigned), events


def resolve_identities(
    records: pd.DataFrame,
    cfg: IdentityConfig,
    previous: pd.DataFrame | None = None,
    decisions: pd.DataFrame | None = None,
    lineage=None,
) -> IdentityResult:
    """Link records into persons.

    `records` has source, source_key, lineage and identifier columns (plus any attribute columns
    the probabilistic pass compares); `previous` is the last run's record -> person map (keeps
    ids stable and yields merge/split events); `decisions` holds review decisions (pair_id,
    record_l, record_r, decision = accept | reject; the latest per pair wins).

    Given `lineage` (a callable yielding Arrow tables of the given LINEAGE columns in the records'
    order, e.g. identity_store.lineage_reader), `records` need not carry the lineage columns (nor
    source_key: the record ids are built from Arrow, not held as a string per record) and the result's
    `records` and `edges` stay compact (RecordMap, EdgeList) until written (`frames()`) or
    materialised (`to_pandas()`); without it they are DataFrames, as before.
    """
    # Memory (1,000,000 people are 37.7M records): no copy of `records` unless its index needs
    # resetting; no record-id string per record (_RecordIds); it is released once its keys,
    # entities and device pairs are taken; see docs/identity.md "Memory".
    compact = lineage is not None
    if not records.index.equals(pd.RangeIndex(len(records))):
        records = records.reset_index(drop=True)
    n = len(records)
    rid = _RecordIds(records["source"], records["source_key"] if "source_key" in records.columns or lineage is None else lineage(["source_key"]))
    accept_pairs, cannot = [], {}
    if decisions is not None and len(decisions):
        latest = decisions.drop_duplicates("pair_id", keep="last")
        position = rid.find(set(latest["record_l"]) | set(latest["record_r"]))  # a record id's first row
        for a, b, d in zip(latest["record_l"], latest["record_r"], latest["decision"]):
            if a in position and b in position:
                ia, ib = int(position[a]), int(position[b])
                if d == "reject":
                    cannot.setdefault(ia, set()).add(ib)
                    cannot.setdefault(ib, set()).add(ia)
                elif d == "accept":
                    accept_pairs.append((ia, ib))

    keys, shared_devices = _keys(records, cfg)
    labels, rule_edges, refused = _deterministic(n, keys, cfg, cannot)
    rule_labels = labels.copy()  # the rule clusters (Splink's entities), kept in the index

    # --- pass 2: Splink over one representative row per cluster ---------------------------------
    entities, representative, training = _entities(records, labels, cfg)
    devices = _device_pairs(records, cfg)
    if lineage is None:
        frame = records[LINEAGE].copy()
        lineage = _frame_lineage(frame)
    del records  # the identifier and attribute columns are not needed any more
    sizes = pd.Series(labels).value_counts()
    prob_edges = pd.DataFrame(columns=["l", "r", "match_probability", "match_weight", "agreed", "method"])
    review = pd.DataFrame(columns=["l", "r", "match_probability", "match_weight", "agreed"])
    trained, model = False, None
    if cfg.probabilistic:
        from personaops.matching import score_entities

        low = min(cfg.review_probability_min, cfg.match_probability_threshold)
        scored = score_entities(
            entities, training, cfg.min_entities_for_matching, cfg.seed, cfg.u_sampling_max_pairs, low,
            backend=cfg.backend, spark_master=cfg.spark_master, spark_driver_memory=cfg.spark_driver_memory,
            spark_shuffle_partitions=cfg.spark_shuffle_partitions, em_max_iterations=cfg.em_max_iterations,
            max_block_pairs_per_entity=cfg.max_block_pairs_per_entity,
        )  # fmt: skip
        trained, model = scored.trained, scored.model
        pairs = scored.pairs
        del scored
        gc.collect()  # Splink's linkers hold DuckDB's memory (0.9 GiB at 100,000 people) in reference cycles: freed now, not after the next steps
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
        labels = _find_all(uf, labels)

    # --- anchors, ids, history ------------------------------------------------------------------
    priority = {kind: i for i, kind in enumerate(cfg.link_keys)}
    anchors = _anchors(keys, labels, priority, rid)
    person, events = _assign_ids(labels, anchors, rid, previous)
    index = _build_index(devices, keys, rule_labels, entities, representative, person, rid, model)
    del keys, anchors  # the key rows are not needed any more: freed before the edges are built

    # What linked each record: the highest-priority evidence on an edge that touches it (by record
    # position: record ids are unique, ingest quarantines a repeated key).
    rank = {**priority, "review": len(priority), "splink": len(priority) + 1}
    best = np.full(n, len(rank), np.int8 if len(rank) < 127 else np.int64)  # len(rank): unlinked
    rule_codes, rule_names = _text(rule_edges["rule"])
    ends = [(rule_edges["l"].to_numpy(dtype=np.int64), rule_edges["r"].to_numpy(dtype=np.int64), np.array([rank[k] for k in rule_names], best.dtype)[rule_codes])]
    del rule_codes
    if merges:
        ends.append((np.array([m["l"] for m in merges], np.int64), np.array([m["r"] for m in merges], np.int64), np.array([rank[m["method"]] for m in merges], best.dtype)))
    for left, right, r in ends:
        np.minimum.at(best, left, r)
        np.minimum.at(best, right, r)
    del ends
    linked_names = np.array([*rank, "unlinked"], dtype=object)
    out = RecordMap(lineage, person, best, linked_names)

    edges = EdgeList(rule_edges, merges, rid)
    del rule_edges

    old_of = None
    for e in events:  # evidence: the edges joining the old persons (merge) or the refused links (split)
        label = e.pop("label")
        if e["event"] == "merge":
            if old_of is None:
                old_of = _old_persons(rid, previous)
            crossing = edges.where(labels, label)
            crossing = crossing[np.array([a != b for a, b in zip(old_of[crossing["_l"].to_numpy()], old_of[crossing["_r"].to_numpy()])], dtype=bool)]
            e["evidence"] = crossing.head(20).drop(columns=["key", "_l", "_r"]).to_dict("records")
        else:
            pids = set(e["new_ids"])
            e["evidence"] = [
                {"record_l": rid[x["record_l"]], "record_r": rid[x["record_r"]], "rule": x["rule"], "reason": x["reason"]}
                for x in refused
                if person[x["record_l"]] in pids and person[x["record_r"]] in pids
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
            if pair in decided or person[row.l] == person[row.r]:
                continue
            va, vb = values.loc[row.entity_l].dropna().to_dict(), values.loc[row.entity_r].dropna().to_dict()
            rows.append([pair, a, b, float(row.match_probability), float(row.match_weight), row.agreed, person[row.l], person[row.r], str(va), str(vb)])
        review_out = pd.DataFrame(rows, columns=REVIEW_COLUMNS)

    stats = {
        "records": n,
        "persons": int(len(pd.unique(person))),
        "unlinked_records": int((best == len(rank)).sum()),
        "shared_devices_ignored": shared_devices,
        "entities_matched": int(len(entities)) if trained else 0,
        "probabilistic_links": int(sum(m["method"] == "splink" for m in merges)),
        "review_links": int(sum(m["method"] == "review" for m in merges)),
        "refused_links": len(refused),
        "review_queue": int(len(review_out)),
        "merges": sum(e["event"] == "merge" for e in events),
        "splits": sum(e["event"] == "split" for e in events),
    }
    if not compact:
        out, edges = out.to_pandas(), edges.to_pandas()
    return IdentityResult(records=out, stats=stats, edges=edges, events=events, review=review_out, index=index)


def _find_all(uf: _GuardedUnion, labels: np.ndarray) -> np.ndarray:
    """uf.find of every label, by distinct label (a cluster's records share it)."""
    uniq, inverse = np.unique(labels, return_inverse=True)
    return np.array([uf.find(int(x)) for x in uniq], dtype=np.int64)[inverse.reshape(-1)]


def _old_persons(rid: "_RecordIds", previous: pd.DataFrame) -> np.ndarray:
    """The previous run's person of every record position (NaN for records it did not have)."""
    return pd.Series(rid.at(np.arange(len(rid)))).map(pd.Series(previous["person_id"].to_numpy(), index=record_ids(previous))).to_numpy(dtype=object)


def _frame_lineage(frame: pd.DataFrame):
    """A lineage callable over a frame's LINEAGE columns (RecordMap): the frame in slices."""

    def frames(columns=LINEAGE):
        if not len(frame):
            yield frame
        for start in range(0, len(frame), RecordMap.CHUNK):
            yield frame.iloc[start : start + RecordMap.CHUNK]

    return frames


@dataclass
class RecordMap:
    """The record -> person map of a full resolve (RECORD_COLUMNS), held as the person per record
    and a code of what linked it until written in chunks (`tables`) or materialised (`to_pandas`):
    the lineage columns are read again from `lineage` (a callable yielding LINEAGE frames or Arrow
    tables in record order) instead of being held as a string per record."""

    CHUNK = 256 * 1024  # rows per written chunk: the strings of one chunk at a time

    lineage: object
    person: np.ndarray
    linked: np.ndarray  # codes into linked_names
    linked_names: np.ndarray

    def __len__(self) -> int:
        return len(self.person)

    def frames(self):
        """RECORD_COLUMNS in record order, a DataFrame (from a frame's lineage) or an Arrow table per chunk."""
        import pyarrow as pa

        start = 0
        for part in self.lineage(LINEAGE):
            m = len(part)
            person, linked = self.person[start : start + m], self.linked_names[self.linked[start : start + m]]
            if isinstance(part, pd.DataFrame):
                part = part[LINEAGE].copy()
                part["person_id"] = person
                part["linked_by"] = linked
            else:
                part = part.select(LINEAGE).append_column("person_id", pa.array(person, pa.string())).append_column("linked_by", pa.array(linked, pa.string()))
            start += m
            yield part
        if start != len(self.person):
            raise ValueError(f"the lineage has {start:,} records, the resolve {len(self.person):,}")

    def to_pandas(self) -> pd.DataFrame:
        parts = [p if isinstance(p, pd.DataFrame) else p.to_pandas() for p in self.frames()]
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)


class EdgeList:
    """The identity graph's edges of a full resolve (EDGE_COLUMNS) as record positions until
    written in chunks (`frames`) or materialised (`to_pandas`): the rule edges' ends are integers and
    their kind and key shared strings, not two record-id strings per edge."""

    CHUNK = 256 * 1024  # rows per written chunk: the strings of one chunk at a time

    def __init__(self, rule_edges: pd.DataFrame, merges: list[dict], rid: "_RecordIds"):
        self.l = rule_edges["l"].to_numpy()  # int32 from the rule pass: no int64 copy
        self.r = rule_edges["r"].to_numpy()
        self.rule_codes, self.rule_names = _text(rule_edges["rule"])  # Categoricals from the rule pass: codes, no string per edge
        self.key_codes, self.key_names = _text(rule_edges["key"])
        self.merges = merges
        self.rid = rid

    def __len__(self) -> int:
        return len(self.l) + len(self.merges)

    def _frame(self, rows: np.ndarray, merges: list[dict]) -> pd.DataFrame:
        rule = pd.DataFrame({"l": self.l[rows], "r": self.r[rows], "rule": self.rule_names[self.rule_codes[rows]], "key": self.key_names[self.key_codes[rows]]})
        return _edge_frame(rule, merges, self.rid)

    def frames(self, arrow: bool = True):
        """EDGE_COLUMNS in order, in chunks: Arrow tables built from the positions without a Python
        string per edge (the merges, few, come last as a DataFrame chunk), or DataFrames."""
        import pyarrow as pa

        n_rule = len(self.l)
        if n_rule == 0 or not arrow:
            for start in range(0, max(n_rule, 1), self.CHUNK):
                stop = min(start + self.CHUNK, n_rule)
                yield self._frame(np.arange(start, stop), self.merges if stop == n_rule else [])
            return
        for start in range(0, n_rule, self.CHUNK):
            rows = slice(start, min(start + self.CHUNK, n_rule))
            rule = pa.array(self.rule_names[self.rule_codes[rows]], pa.string())
            yield pa.table({"record_l": self.rid.arrow(self.l[rows]), "record_r": self.rid.arrow(self.r[rows]), "method": pa.array(_repeat("rule", len(rule)), pa.string()),
                            "rule": rule, "key": pa.array(self.key_names[self.key_codes[rows]], pa.string()), "match_probability": pa.array(np.ones(len(rule))),
                            "match_weight": pa.array(np.full(len(rule), np.nan)), "agreed": rule})  # fmt: skip
        if self.merges:
            yield self._frame(np.arange(0), self.merges)

    def to_pandas(self) -> pd.DataFrame:
        parts = list(self.frames(arrow=False))
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]

    def where(self, labels: np.ndarray, label) -> pd.DataFrame:
        """The edges (EDGE_COLUMNS plus their ends' positions _l, _r) with both ends in cluster `label`, in order."""
        rows = np.flatnonzero((labels[self.l] == label) & (labels[self.r] == label))
        merges = [m for m in self.merges if labels[m["l"]] == label and labels[m["r"]] == label]
        out = self._frame(rows, merges)
        out["_l"] = np.concatenate([self.l[rows], np.array([m["l"] for m in merges], np.int64)])
        out["_r"] = np.concatenate([self.r[rows], np.array([m["r"] for m in merges], np.int64)])
        return out


def _edge_frame(rule_edges: pd.DataFrame, merges: list[dict], rid: "_RecordIds") -> pd.DataFrame:
    """EDGE_COLUMNS: the rule edges, then the merges. The six text columns are filled into one
    object block that becomes the frame's block as is (a frame built from a dict of columns
    copies them into one block)."""
    n_rule, n = len(rule_edges), len(rule_edges) + len(merges)
    text = np.empty((6, n), dtype=object)  # record_l, record_r, method, rule, key, agreed
    text[0, :n_rule] = rid.at(rule_edges["l"].to_numpy(dtype=np.int64))
    text[1, :n_rule] = rid.at(rule_edges["r"].to_numpy(dtype=np.int64))
    text[2, :n_rule] = "rule"
    text[3, :n_rule] = rule_edges["rule"].to_numpy(dtype=object)
    text[4, :n_rule] = rule_edges["key"].to_numpy(dtype=object)
    text[5, :n_rule] = text[3, :n_rule]
    for i, m in enumerate(merges, start=n_rule):
        text[:, i] = (rid[m["l"]], rid[m["r"]], m["method"], "", "", m["agreed"])
    edges = pd.DataFrame(text.T, columns=["record_l", "record_r", "method", "rule", "key", "agreed"], copy=False)
    edges.insert(5, "match_probability", np.concatenate([np.ones(n_rule), np.array([float(m["match_probability"]) for m in merges], np.float64)]))
    edges.insert(6, "match_weight", np.concatenate([np.full(n_rule, np.nan), np.array([float(m["match_weight"]) for m in merges], np.float64)]))
    return edges


def _anchors(keys: pd.DataFrame, labels: np.ndarray, priority: dict[str, int], rid: "_RecordIds") -> pd.Series:
    """Each cluster's anchor (index: every label, sorted): its highest-priority key node (smallest
    kind by priority, then smallest key), else 'record:' + its smallest record id. By integer
    sorts on the key rows instead of a sorted copy of them."""
    comp = labels[keys["record_idx"].to_numpy(dtype=np.int64)]
    order = np.lexsort((pd.factorize(keys["key"], sort=True)[0], keys["kind"].map(priority).to_numpy(dtype=np.int64), comp))
    cs = comp[order]
    first = np.ones(len(order), bool)
    first[1:] = cs[1:] != cs[:-1]
    node = pd.Series(keys["node"].to_numpy(dtype=object)[order[first]], index=cs[first])
    all_labels = np.unique(labels)
    vals = node.reindex(all_labels).to_numpy(dtype=object)
    missing = pd.isna(vals)
    if missing.any():  # clusters without a key: their smallest record id (by sorting; a string groupby-min runs in Python)
        lonely = np.flatnonzero(np.isin(labels, all_labels[missing]))
        own = pd.DataFrame({"label": labels[lonely], "own": rid.at(lonely)}).sort_values(["label", "own"]).drop_duplicates("label").set_index("label")["own"]
        vals[missing] = ("record:" + own).reindex(all_labels[missing]).to_numpy(dtype=object)
    return pd.Series(vals, index=all_labels)


def _build_index(devices, keys, rule_labels, entities, representative, person, rid: "_RecordIds", model) -> IdentityIndex:
    """The identity index of a full pass (see IdentityIndex)."""
    idx = keys["record_idx"].to_numpy(dtype=np.int64)
    codes, nodes = pd.factorize(keys["node"])  # each distinct node hashed once
    node_hash = _hash(nodes)[codes] if len(keys) else np.array([], np.uint64)
    entity = rule_labels[idx].astype(np.int64)
    # one row per (node, entity): its first record, in (node_hash, entity, record) order
    order = np.lexsort((idx, entity, node_hash))
    h, e = node_hash[order], entity[order]
    first = np.ones(len(order), bool)
    first[1:] = (h[1:] != h[:-1]) | (e[1:] != e[:-1])
    rows = order[first]
    k = pd.DataFrame({"node_hash": node_hash[rows], "kind": keys["kind"].to_numpy(dtype=object)[rows], "entity": entity[rows],
                      "person_id": person[idx[rows]], "first_record": rid.at(idx[rows])})  # fmt: skip
    sizes = pd.Series(rule_labels).value_counts()
    uniq, first_pos = np.unique(rule_labels, return_index=True)
    person_of = pd.Series(person[first_pos], index=uniq)  # each rule cluster's person (its first record's)
    ents = entities.copy()
    ents["entity"] = ents["entity"].astype(np.int64)
    ents["size"] = ents["entity"].map(sizes).fillna(0).astype(np.int64).to_numpy()
    ents["person_id"] = ents["entity"].map(person_of).to_numpy()
    ents["record"] = rid.at(ents["entity"].map(representative).to_numpy(dtype=np.int64))
    return IdentityIndex(keys=k, devices=devices, entities=ents.reset_index(drop=True), model=model)


# --- incremental runs ---------------------------------------------------------------------------
LINEAGE = ["source", "source_key", "_batch_id", "_row_number", "_row_hash"]


def resolve_incremental(
    new_records: pd.DataFrame,
    previous_ids: set[str],
    index: IdentityIndex,
    cfg: IdentityConfig,
    decisions: pd.DataFrame | None = None,
) -> tuple[IdentityResult | None, str]:
    """Link only the records added since the last run; every earlier record keeps its person.

    `new_records` holds the added records (LINEAGE plus identifier and attribute columns),
    `previous_ids` the last run's person ids, `index` the last run's IdentityIndex. The result's
    `records` and `edges` hold only the new records' rows and the new evidence, `upgrades` the
    earlier records whose evidence a new link improves (identity_store.finish_incremental
    combines them with the last run's map and edges). The rules link new records to each other and, through
    the index's key hashes, to earlier persons; Splink scores the new entities against the new
    and the earlier ones with the last full pass's model. Returns (None, reason) when the new
    records would change an earlier person (join two persons, break a cap, make a device shared,
    or meet a review decision): the full resolve handles those.
    """
    new_records = new_records.reset_index(drop=True)
    n = len(new_records)
    if n == 0:
        empty = pd.DataFrame({c: pd.Series(dtype=object) for c in RECORD_COLUMNS})
        stats = {"records": 0, "new_records": 0, "persons": 0, "new_persons": 0, "unlinked_records": 0, "shared_devices_ignored": int((index.devices.groupby("dev").size() > cfg.max_persons_per_device).sum()),
                 "entities_matched": 0, "probabilistic_links": 0, "review_links": 0, "refused_links": 0, "review_queue": 0, "merges": 0, "splits": 0}  # fmt: skip
        return IdentityResult(records=empty, stats=stats, edges=pd.DataFrame(columns=EDGE_COLUMNS), index=index, upgrades=pd.DataFrame(columns=["record", "by"])), ""
    rids = record_ids(new_records)
    if decisions is not None and len(decisions) and (decisions["record_l"].isin(set(rids)).any() or decisions["record_r"].isin(set(rids)).any()):
        return None, "a review decision names a new record"
    keys, _ = _keys(new_records, cfg)
    # devices: a new (device, customer) pair must not make a device shared that was not
    pairs_new = _device_pairs(new_records, cfg)
    shared_devices = 0
    if len(pairs_new):
        before = index.devices.groupby("dev").size()
        after = pd.concat([index.devices, pairs_new]).drop_duplicates().groupby("dev").size()
        shared_now = set(after[after > cfg.max_persons_per_device].index)
        if shared_now - set(before[before > cfg.max_persons_per_device].index):
            return None, "a new record makes a device shared"
        shared_devices = len(shared_now)
        dev_hash = pd.Series(_hash(keys["node"].to_numpy()), index=keys.index)
        identified = set(keys.loc[keys["kind"] == "customer_id", "record_idx"])
        keys = keys[~((keys["kind"] == "device_id") & dev_hash.isin(shared_now) & keys["record_idx"].isin(identified))].reset_index(drop=True)
    else:
        before = index.devices.groupby("dev").size()
        shared_devices = int((before > cfg.max_persons_per_device).sum())
    keys["node_hash"] = _hash(keys["node"].to_numpy())
    labels, rule_edges, refused = _deterministic(n, keys, cfg, {})
    keys["label"] = labels[keys["record_idx"].to_numpy()] if n else np.array([], np.int64)

    # rules against the earlier persons: a new cluster sharing a key joins that key's person
    hits = keys.merge(index.keys[["node_hash", "entity", "person_id", "first_record"]], on="node_hash", how="inner")
    per_label = hits.groupby("label")["person_id"].nunique()
    if (per_label > 1).any():
        return None, "new records join two earlier persons"
    refused_labels = {labels[r["record_l"]] for r in refused} | {labels[r["record_r"]] for r in refused}
    if refused_labels & set(per_label.index):
        return None, "a capped link among new records touches an earlier person"
    # An earlier one-record cluster that Splink attached to a person stops being one record once a
    # new record joins it by a rule, and a full pass would then no longer attach it (Splink only
    # attaches one-record clusters): a full resolve decides.
    ents = index.entities
    joined_persons = ents.loc[ents["person_id"].duplicated(keep=False), ["entity", "size"]]
    if len(hits) and hits["entity"].isin(set(joined_persons.loc[joined_persons["size"] == 1, "entity"])).any():
        return None, "new records join a record Splink attached to an earlier person"
    label_person = hits.drop_duplicates("label").set_index("label")["person_id"]
    person_values = _person_values(index, set(label_person))
    for lab, pid in label_person.items():
        mine = keys[keys["label"] == lab]
        for kind, group in mine.groupby("kind"):
            cap = cfg.max_values_per_person.get(kind)
            if cap is not None and len(person_values.get((pid, kind), set()) | set(group["node_hash"])) > cap:
                return None, f"new records would give an earlier person more than {cap} {kind} value(s)"

    # Splink: the new clusters no rule attached, against each other and the earlier entities
    entities, representative, _ = _entities(new_records, labels, cfg)
    sizes = pd.Series(labels).value_counts()
    free = entities[~entities["entity"].isin(label_person.index)]
    offset = int(index.entities["entity"].max()) + 1 if len(index.entities) else 0
    prob_edges = pd.DataFrame(columns=["l", "r", "p", "match_probability", "match_weight", "agreed"])
    review = pd.DataFrame(columns=["l", "r", "match_probability", "match_weight", "agreed", "entity_l", "entity_r"])
    total_entities = len(index.entities) + len(entities) - len(label_person)
    if cfg.probabilistic and len(free):
        if index.model is None:
            if total_entities >= max(cfg.min_entities_for_matching, 2):
                return None, "enough entities for a first probabilistic pass"
        else:
            from personaops.matching import link_new_entities

            low = min(cfg.review_probability_min, cfg.match_probability_threshold)
            pairs = link_new_entities(free.assign(entity=free["entity"] + offset), index.entities, index.model, low, total_entities)
            pairs["entity_l"] -= offset  # always a new cluster's label
            new_r = pairs["entity_r"] >= offset
            size_old = index.entities.set_index("entity")["size"]
            size_r = np.where(new_r, pairs["entity_r"].map(lambda e: sizes.get(e - offset, 0)), pairs["entity_r"].map(size_old).fillna(0))
            single = pairs["entity_l"].map(sizes).eq(1).to_numpy() | (size_r == 1)
            pairs = pairs[single].assign(new_r=new_r[single])
            pairs = pairs.sort_values(["match_probability", "entity_l", "entity_r"], ascending=[False, True, True])
            strong = pairs["match_probability"] >= cfg.match_probability_threshold
            prob_edges, review = pairs[strong], pairs[~strong]

    # guarded union of new clusters and the earlier persons they match
    person_ids = sorted(set(label_person) | set(index.entities.loc[index.entities["entity"].isin(prob_edges.loc[~prob_edges["new_r"], "entity_r"]) if len(prob_edges) else [], "person_id"]))
    n_labels = int(labels.max()) + 1 if n else 0
    node_of_person = {pid: n_labels + i for i, pid in enumerate(person_ids)}
    values: dict[int, dict[str, set]] = {}
    for lab, kind, h in zip(keys["label"], keys["kind"], keys["node_hash"]):
        values.setdefault(int(lab), {}).setdefault(kind, set()).add(h)
    person_vals = _person_values(index, set(person_ids))
    for (pid, kind), vals in person_vals.items():
        values.setdefault(node_of_person[pid], {}).setdefault(kind, set()).update(vals)
    uf = _GuardedUnion(n_labels + len(person_ids), cfg.max_values_per_person, values, {})
    for lab, pid in label_person.items():
        uf.union(node_of_person[pid], int(lab), force=True)  # checked above
    old_entity_person = index.entities.set_index("entity")["person_id"]
    merges = []
    for row in prob_edges.itertuples(index=False):
        a = int(row.entity_l)
        b = int(row.entity_r) - offset if row.new_r else node_of_person[old_entity_person[row.entity_r]]
        ra, rb = uf.find(a), uf.find(b)
        if ra != rb and ra >= n_labels and rb >= n_labels:
            return None, "new records join two earlier persons"
        if ra != rb and (_holds_person(uf, ra, n_labels) and _holds_person(uf, rb, n_labels)):
            return None, "new records join two earlier persons"
        reason = uf.union(b, a) if b >= n_labels else uf.union(a, b)
        left = int(representative[a])
        right = int(representative[b]) if b < n_labels else None
        far = rids.iloc[left]
        other = rids.iloc[right] if right is not None else index.entities.set_index("entity").loc[row.entity_r, "record"]
        if reason is None:
            merges.append({"record_l": other, "record_r": far, "method": "splink", "match_probability": float(row.match_probability),
                           "match_weight": float(row.match_weight), "agreed": row.agreed})  # fmt: skip
        else:
            refused.append({"record_l": other, "record_r": far, "rule": "splink", "reason": reason})

    # person ids: the earlier person's, else the cluster's anchor key (as a full run would give)
    roots = np.array([uf.find(int(x)) for x in labels]) if n else np.array([], np.int64)
    person_of_root = {uf.find(node): pid for pid, node in node_of_person.items()}
    priority = {kind: i for i, kind in enumerate(cfg.link_keys)}
    keyed = keys.assign(component=roots[keys["record_idx"].to_numpy()] if n else [], priority=keys["kind"].map(priority))
    anchors = keyed.sort_values(["component", "priority", "key"]).drop_duplicates("component").set_index("component")["node"]
    own = pd.DataFrame({"label": roots, "own": ("record:" + rids).to_numpy()}).sort_values(["label", "own"]).drop_duplicates("label").set_index("label")["own"]
    joined = own.to_frame("own").join(anchors)
    anchors = joined["node"].where(joined["node"].notna(), joined["own"])
    taken = set(previous_ids)
    for root in pd.unique(roots):
        if root in person_of_root:
            continue
        pid, k = person_id_for(anchors[root]), 0
        while pid in taken:
            k += 1
            pid = person_id_for(f"{anchors[root]}#{k}")
        person_of_root[root], _ = pid, taken.add(pid)
    person = np.array([person_of_root[r] for r in roots], dtype=object)

    # edges: rule edges among the new records, a new record to the earlier record holding its key, Splink merges
    rid = rids.to_numpy()
    hit_edges = hits.sort_values(["node_hash", "record_idx"]).drop_duplicates("node_hash")
    parts = [
            pd.DataFrame({"record_l": rid[rule_edges["l"].to_numpy(dtype=np.int64)], "record_r": rid[rule_edges["r"].to_numpy(dtype=np.int64)],
                          "method": "rule", "rule": rule_edges["rule"].to_numpy(), "key": rule_edges["key"].to_numpy(),
                          "match_probability": 1.0, "match_weight": np.nan, "agreed": rule_edges["rule"].to_numpy()}),
            pd.DataFrame({"record_l": hit_edges["first_record"].to_numpy(), "record_r": rid[hit_edges["record_idx"].to_numpy(dtype=np.int64)],
                          "method": "rule", "rule": hit_edges["kind"].to_numpy(), "key": hit_edges["key"].to_numpy(),
                          "match_probability": 1.0, "match_weight": np.nan, "agreed": hit_edges["kind"].to_numpy()}),
            pd.DataFrame(merges, columns=["record_l", "record_r", "method", "match_probability", "match_weight", "agreed"]).assign(rule="", key=""),
    ]  # fmt: skip
    parts = [p[EDGE_COLUMNS] for p in parts if len(p)]
    edges = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=EDGE_COLUMNS)
    rank = {**priority, "review": len(priority), "splink": len(priority) + 1, "unlinked": len(priority) + 2}
    touch = pd.concat([edges[["record_l", "method", "rule"]].rename(columns={"record_l": "record"}), edges[["record_r", "method", "rule"]].rename(columns={"record_r": "record"})])
    touch["by"] = touch["rule"].where(touch["method"] == "rule", touch["method"])
    touch["rank"] = touch["by"].map(rank)
    best = touch.sort_values(["record", "rank"]).drop_duplicates("record").set_index("record")["by"]

    # the new records' rows; earlier records a new link touches may gain better evidence
    out = new_records[LINEAGE].copy()
    out["person_id"] = person
    out["linked_by"] = pd.Series(rid).map(best).fillna("unlinked").to_numpy()
    upgrades = best[~best.index.isin(set(rid))].rename("by").rename_axis("record").reset_index()

    review_out = pd.DataFrame(columns=REVIEW_COLUMNS)
    pid_of = dict(zip(rid, person))
    if len(review):
        attrs = [c for c in entities.columns if c != "entity"]
        new_vals = entities.set_index("entity")[attrs]
        old_vals = index.entities.set_index("entity")
        rows = []
        for row in review.itertuples(index=False):
            a = rid[int(representative[int(row.entity_l)])]
            if row.new_r:
                b, vb = rid[int(representative[int(row.entity_r) - offset])], new_vals.loc[int(row.entity_r) - offset]
                pb = pid_of[b]
            else:
                b, vb = old_vals.loc[row.entity_r, "record"], old_vals.loc[row.entity_r, [c for c in attrs if c in old_vals.columns]]
                pb = old_vals.loc[row.entity_r, "person_id"]
            if pid_of[a] == pb:
                continue
            rows.append([pair_id_for(a, b), a, b, float(row.match_probability), float(row.match_weight), row.agreed, pid_of[a], pb,
                         str(new_vals.loc[int(row.entity_l)].dropna().to_dict()), str(vb.dropna().to_dict())])  # fmt: skip
        review_out = pd.DataFrame(rows, columns=REVIEW_COLUMNS)

    # the index grows by the new keys, device pairs and clusters
    new_keys = keys.assign(person_id=person[keys["record_idx"].to_numpy()] if n else [], first_record=rid[keys["record_idx"].to_numpy()] if n else [])
    attached = hits.drop_duplicates("label").set_index("label")["entity"].astype(np.int64)
    new_keys["entity"] = keys["label"].map(attached).fillna(keys["label"] + offset).astype(np.int64).to_numpy()
    new_keys = new_keys.sort_values(["node_hash", "entity", "record_idx"]).drop_duplicates(["node_hash", "entity"])
    index_keys = pd.concat([index.keys, new_keys[["node_hash", "kind", "entity", "person_id", "first_record"]]], ignore_index=True)
    index_keys = index_keys.drop_duplicates(["node_hash", "entity"]).reset_index(drop=True)
    grown = index.entities.copy()
    added_to = pd.Series(labels).map(attached).dropna().astype(np.int64).value_counts()
    grown["size"] = grown["size"] + grown["entity"].map(added_to).fillna(0).astype(np.int64)
    fresh = free.assign(entity=free["entity"].astype(np.int64) + offset, size=free["entity"].map(sizes).to_numpy(),
                        person_id=[person[int(representative[e])] for e in free["entity"]],
                        record=[rid[int(representative[e])] for e in free["entity"]])  # fmt: skip
    index_out = IdentityIndex(keys=index_keys, devices=pd.concat([index.devices, pairs_new]).drop_duplicates().reset_index(drop=True),
                              entities=pd.concat([grown, fresh], ignore_index=True), model=index.model)  # fmt: skip
    stats = {
        "records": n,
        "new_records": n,
        "persons": int(len(set(person) - set(previous_ids))),
        "new_persons": int(len(set(person) - set(previous_ids))),
        "unlinked_records": int((out["linked_by"] == "unlinked").sum()),
        "shared_devices_ignored": shared_devices,
        "entities_matched": int(len(free)),
        "probabilistic_links": int(len(merges)),
        "review_links": 0,
        "refused_links": len(refused),
        "review_queue": int(len(review_out)),
        "merges": 0,
        "splits": 0,
    }
    return IdentityResult(records=out[RECORD_COLUMNS], stats=stats, edges=edges, events=[], review=review_out, index=index_out, upgrades=upgrades), ""


def _person_values(index: IdentityIndex, persons: set[str]) -> dict[tuple[str, str], set]:
    """(person, kind) -> the key hashes the person holds, for the caps."""
    if not persons:
        return {}
    k = index.keys[index.keys["person_id"].isin(persons)]
    return {(p, kind): set(g) for (p, kind), g in k.groupby(["person_id", "kind"])["node_hash"]}


def _holds_person(uf: _GuardedUnion, root: int, n_labels: int) -> bool:
    return root >= n_labels or any(uf.find(x) == root for x in range(n_labels, len(uf.parent)))
