"""Identity resolution v0: deterministic linking on normalised keys into a stable `person_id`.

Records (one per accepted source row) are linked when they share a normalised customer id,
e-mail, phone, account id or (unshared) device id; connected components become persons. Junk
values never link, and a device seen with several customer ids is a shared device and never
links. The person id is derived from the component's anchor key (its smallest customer id,
else e-mail, else phone, ... else the record itself), so re-running on the same or grown data
keeps existing ids. The probabilistic pass (Splink) plugs in as `link_probabilistic`: it gets
the records left unlinked and returns extra record-record edges.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from personaops.config import IdentityConfig

RECORD_COLUMNS = ["source", "source_key", "_batch_id", "_row_number", "_row_hash", "person_id", "linked_by"]


def normalise_email(s: pd.Series) -> pd.Series:
    return s.str.strip().str.lower()


def normalise_phone(s: pd.Series) -> pd.Series:
    digits = s.str.replace(r"\D", "", regex=True)
    # North-American style numbers keep their last 10 digits (drops a leading country code 1).
    return digits.where(digits.str.len() != 11, digits.str[-10:]).where(digits.str.len() >= 7)


def normalise_id(s: pd.Series) -> pd.Series:
    return s.str.strip().str.lower()


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


def person_id_for(anchor: str) -> str:
    return "P" + hashlib.sha1(anchor.encode("utf-8")).hexdigest()[:12]


def _keys(records: pd.DataFrame, cfg: IdentityConfig) -> tuple[pd.DataFrame, int]:
    """Long table (record_idx, key_kind, key) of usable normalised link keys."""
    junk = {j.strip().lower() for j in cfg.junk_values}
    parts = []
    for kind in cfg.link_keys:
        if kind not in records.columns:
            continue
        values = records[kind].dropna().astype(str)
        norm = NORMALISERS[kind](values).dropna()
        norm = norm[~norm.isin(junk) & (norm != "")]
        parts.append(pd.DataFrame({"record_idx": norm.index.to_numpy(), "kind": kind, "key": norm.to_numpy()}))
    keys = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["record_idx", "kind", "key"])
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


def resolve_identities(records: pd.DataFrame, cfg: IdentityConfig) -> IdentityResult:
    """Link records into persons. `records` has source, source_key, lineage and identifier columns."""
    records = records.reset_index(drop=True)
    n = len(records)
    keys, shared_devices = _keys(records, cfg)
    keys["node"] = keys["kind"] + ":" + keys["key"]
    codes, uniques = pd.factorize(keys["node"])
    m = len(uniques)
    graph = coo_matrix((np.ones(len(keys)), (keys["record_idx"].to_numpy(dtype=np.int64), n + codes)), shape=(n + m, n + m))
    _, labels = connected_components(graph, directed=False)
    record_labels = labels[:n]

    # Anchor of each component: its highest-priority key kind, smallest value; else the record itself.
    priority = {kind: i for i, kind in enumerate(cfg.link_keys)}
    keys["component"] = record_labels[keys["record_idx"].to_numpy()]
    keys["priority"] = keys["kind"].map(priority)
    anchors = keys.sort_values(["component", "priority", "key"]).drop_duplicates("component").set_index("component")["node"]
    own = "record:" + records["source"].astype(str) + ":" + records["source_key"].astype(str)
    anchor = pd.Series(record_labels).map(anchors).fillna(own)
    unique_anchors = anchor.unique()
    ids = dict(zip(unique_anchors, (person_id_for(a) for a in unique_anchors)))

    # What linked each record: the highest-priority key it shares with another record.
    key_sizes = keys.groupby("node")["record_idx"].transform("nunique")
    shared_keys = keys[key_sizes > 1].sort_values(["record_idx", "priority"]).drop_duplicates("record_idx")
    linked_by = pd.Series("unlinked", index=records.index, dtype=object)
    linked_by.loc[shared_keys["record_idx"].to_numpy()] = shared_keys["kind"].to_numpy()

    out = records[["source", "source_key", "_batch_id", "_row_number", "_row_hash"]].copy()
    out["person_id"] = anchor.map(ids).to_numpy()
    out["linked_by"] = linked_by.to_numpy()
    persons = out["person_id"].nunique()
    stats = {
        "records": n,
        "persons": persons,
        "unlinked_records": int((out["linked_by"] == "unlinked").sum()),
        "shared_devices_ignored": shared_devices,
    }
    return IdentityResult(records=out, stats=stats)
