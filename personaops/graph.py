"""The persona knowledge graph: node and edge tables per run, in the lake, loadable into networkx.

Nodes (`node_id` = `<kind>:<name>`): person, persona, intent, event_type, campaign, ticket.
Edges (`src`, `dst`, `kind`, `weight`, `last_seen`):
- did        person -> event_type   weight = events, last_seen = latest event (recency)
- mentions   person -> intent       weight = texts with that intent
- filed      person -> ticket;  about: ticket -> intent
- exposed_to person -> campaign     weight = exposures; converted: person -> campaign (exposed and converted)
- held_out   person -> campaign     holdout (control) people, weight = 1 + converted (see `attr`)
- belongs_to person -> persona      weight = assignment confidence
- co_occurs  event_type -- event_type (src < dst) weight = sessions where both occur
- next       event_type -> event_type  weight = consecutive transitions within a session

Tables are written to `lake/graph/run_id=<run>/{nodes,edges}.parquet` (queryable with DuckDB:
`SELECT * FROM 'lake/graph/*/edges.parquet'` with hive partitioning). Signals derived from the
graph — per person: intents mentioned, transitions, 3-step sequences and co-occurrences in a
session, event types done — are the units the churn question ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from personaops.workspace import Workspace

NODE_COLUMNS = ["node_id", "kind", "name", "weight"]
EDGE_COLUMNS = ["src", "dst", "kind", "weight", "last_seen", "attr"]
SIGNAL_KINDS = ("intent", "next", "seq", "co", "did")


def _edges(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    frame = frame.copy()
    frame["kind"] = kind
    for col, default in (("weight", 1.0), ("last_seen", pd.NaT), ("attr", "")):
        if col not in frame.columns:
            frame[col] = default
    frame["weight"] = frame["weight"].astype(float)
    frame["last_seen"] = pd.to_datetime(frame["last_seen"], utc=True)
    frame["attr"] = frame["attr"].astype("string")
    return frame[EDGE_COLUMNS]


def session_frame(events: pd.DataFrame) -> pd.DataFrame:
    """Events with a person, ordered within sessions (person_id, session, event_type, event_time)."""
    if events.empty:
        return pd.DataFrame(columns=["person_id", "session", "event_type", "event_time"])
    keep = events["event_type"].notna() & (events["event_type"].astype(str) != "")
    # only the columns used (the lake rows carry identifiers and lineage too)
    ev = events.loc[keep, [c for c in ("person_id", "session_id", "event_type", "event_time") if c in events.columns]]
    if "session_id" in ev.columns and ev["session_id"].notna().any():
        missing = ev["session_id"].isna()
        fallback = "day:" + ev.loc[missing, "event_time"].dt.floor("D").astype(str)  # only where needed
        ev["session"] = ev["session_id"].astype(object).where(~missing, fallback)
    else:  # no session ids: a calendar day of one person is a session
        ev["session"] = "day:" + ev["event_time"].dt.floor("D").astype(str)
    ev["session"] = ev["person_id"].astype(str) + "|" + ev["session"].astype(str)
    return ev.sort_values(["session", "event_time"], kind="stable")[["person_id", "session", "event_type", "event_time"]]


def _session_pairs(session: np.ndarray, kind: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, left, right): the first row of each distinct (session, kind) in order, and every
    ordered pair of those rows within one session (positions into `rows`; left-major, as a
    self-merge on the session orders them). Sessions must be contiguous."""
    rows = pd.DataFrame({"session": session, "kind": kind}).drop_duplicates().index.to_numpy()
    t_session = session[rows]
    starts = np.flatnonzero(np.r_[True, t_session[1:] != t_session[:-1]]) if len(rows) else np.empty(0, dtype=np.int64)
    sizes = np.diff(np.r_[starts, len(rows)])
    group_size = np.repeat(sizes, sizes)
    left = np.repeat(np.arange(len(rows)), group_size)
    offsets = np.repeat(np.cumsum(group_size) - group_size, group_size)
    right = np.repeat(np.repeat(starts, sizes), group_size) + (np.arange(len(left)) - offsets)
    return rows, left, right


def sequence_signals(sessions: pd.DataFrame, categorical: bool = False) -> pd.DataFrame:
    """Per person the sequence signals they show (person_id, signal): `next:a>b` (consecutive
    transition, a != b), `seq:a>b>c` (three consecutive distinct steps) and `co:a+b` (both in one
    session, a < b). `categorical`: both columns as pandas categoricals (the same values; at 100k
    people the rows are tens of millions, and one Python string per cell was GBs)."""
    if sessions.empty:
        return pd.DataFrame(columns=["person_id", "signal"])
    # Worked on integer codes (a signal's text is built once, not once per row): at 100k people the
    # per-row strings were GBs. Same rows in the same order as the string version.
    s = sessions.reset_index(drop=True)
    person, persons = pd.factorize(s["person_id"])
    session = pd.factorize(s["session"])[0]
    et, types = pd.factorize(s["event_type"].astype(str))
    k = len(types) + 1  # code k - 1 ... k**3: (kind, a, b, c) packed in one int64
    rank = np.argsort(np.argsort(np.asarray(types, dtype=object)))  # string order of the event types
    n = len(s)
    same1 = np.zeros(n, dtype=bool)
    same1[:-1] = session[:-1] == session[1:]
    same2 = np.zeros(n, dtype=bool)
    same2[:-2] = same1[:-2] & (session[1:-1] == session[2:])
    b, c = np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)
    b[:-1], c[:-2] = et[1:], et[2:]
    a = et.astype(np.int64)
    nxt = same1 & (a != b)
    seq = same2 & (a != b) & (b != c)
    parts = [(person[nxt], _pack(1, a[nxt], b[nxt], 0, k)), (person[seq], _pack(2, a[seq], b[seq], c[seq], k))]
    # co-occurrence: every pair of types in one session, the smaller (as text) first
    first, left, right = _session_pairs(session, et)
    t_et, t_person = a[first], person[first]
    keep = rank[t_et[left]] < rank[t_et[right]]
    left, right = left[keep], right[keep]
    parts.append((t_person[left], _pack(3, t_et[left], t_et[right], 0, k)))
    parts.append((person, _pack(4, a, 0, 0, k)))
    pairs = pd.DataFrame({"p": np.concatenate([p for p, _ in parts]), "sig": np.concatenate([q for _, q in parts])}).drop_duplicates()
    codes, signals = pd.factorize(pairs["sig"].to_numpy())
    text = np.array([_signal_text(int(v), k, types) for v in signals], dtype=object)
    if categorical:
        return pd.DataFrame({"person_id": pd.Categorical.from_codes(pairs["p"].to_numpy(), categories=pd.Index(np.asarray(persons, dtype=object))),
                             "signal": pd.Categorical.from_codes(codes, categories=pd.Index(text))})  # fmt: skip
    return pd.DataFrame({"person_id": np.asarray(persons, dtype=object)[pairs["p"].to_numpy()], "signal": text[codes]})


def _pack(kind: int, a, b, c, k: int) -> np.ndarray:
    return ((kind * k + np.asarray(a, dtype=np.int64)) * k + b) * k + c


def _signal_text(value: int, k: int, types) -> str:
    value, c = divmod(value, k)
    value, b = divmod(value, k)
    kind, a = divmod(value, k)
    if kind == 1:
        return f"next:{types[a]}>{types[b]}"
    if kind == 2:
        return f"seq:{types[a]}>{types[b]}>{types[c]}"
    if kind == 3:
        return f"co:{types[a]}+{types[b]}"
    return f"did:{types[a]}"


def _co_occurrences(s: pd.DataFrame) -> pd.DataFrame:
    """(event_type_x, event_type_y, weight): sessions where both types occur, x < y as text, in
    (x, y) order. Counted on integer codes: the pairs of a string self-merge were GBs at 100k people."""
    session = pd.factorize(s["session"])[0]
    et, types = pd.factorize(s["event_type"])
    k = len(types)
    rank = np.argsort(np.argsort(np.asarray(types.astype(str), dtype=object)))
    rows, left, right = _session_pairs(session, et)
    x, y = et[rows][left], et[rows][right]
    keep = rank[x] < rank[y]
    counts = np.bincount(x[keep].astype(np.int64) * k + y[keep], minlength=k * k).reshape(k, k)
    xs, ys = np.nonzero(counts)
    order = np.lexsort((rank[ys], rank[xs]))
    xs, ys = xs[order], ys[order]
    values = np.asarray(types, dtype=object)
    return pd.DataFrame({"event_type_x": values[xs], "event_type_y": values[ys], "weight": counts[xs, ys].astype(np.int64)})


# --- the behaviour part of the graph, and how an incremental run updates it ---------------------
# Everything the graph derives from events is a sum over persons (a session belongs to one
# person): each person's `did` edges and sequence signals, and the graph-wide counts of event
# types, transitions (`next`) and co-occurrences. An incremental run (earlier records kept their
# persons; only records were added) therefore takes the last run's tables, replaces the rows of
# the persons with a new event record, and updates each count by (their sessions now) - (their
# sessions then): the same tables a full build gives on the same data.
@dataclass
class EventParts:
    """did: person_id, event_type, weight (events), last_seen, by person then type; types:
    event_type, weight (events); nxt: a, b, weight (transitions); co: event_type_x, event_type_y,
    weight (sessions with both, x < y). Counts are int64; the count tables in canonical order
    (weight descending, then names; co by names)."""

    did: pd.DataFrame
    types: pd.DataFrame
    nxt: pd.DataFrame
    co: pd.DataFrame


def _by_weight(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Counts (weight > 0 only) ordered by weight descending, then by the keys as text: one order
    for a full build and an incremental update alike (ties ordered by first appearance were not)."""
    frame = frame[frame["weight"] > 0]
    return frame.sort_values(["weight", *keys], ascending=[False, *[True] * len(keys)], kind="stable").reset_index(drop=True)


def event_parts(sessions: pd.DataFrame) -> EventParts:
    """The behaviour part of the graph from `session_frame` rows."""
    if not len(sessions):
        empty = pd.Series(dtype=object)
        return EventParts(
            pd.DataFrame({"person_id": empty, "event_type": empty, "weight": pd.Series(dtype="int64"), "last_seen": pd.Series(dtype="datetime64[ns, UTC]")}),
            pd.DataFrame({"event_type": empty, "weight": pd.Series(dtype="int64")}),
            pd.DataFrame({"a": empty, "b": empty, "weight": pd.Series(dtype="int64")}),
            pd.DataFrame({"event_type_x": empty, "event_type_y": empty, "weight": pd.Series(dtype="int64")}),
        )  # fmt: skip
    did = sessions.groupby(["person_id", "event_type"]).agg(weight=("event_time", "size"), last_seen=("event_time", "max")).reset_index()
    did["weight"] = did["weight"].astype("int64")
    counts = sessions["event_type"].astype(str).value_counts()
    types = _by_weight(pd.DataFrame({"event_type": counts.index.astype(str).to_numpy(dtype=object), "weight": counts.to_numpy(dtype="int64")}), ["event_type"])
    s = sessions.reset_index(drop=True)
    et = s["event_type"].astype(str)
    same = s["session"].eq(s["session"].shift(-1)) & et.ne(et.shift(-1))
    trans = pd.DataFrame({"a": et, "b": et.shift(-1)})[same]
    nxt = trans.groupby(["a", "b"]).size().rename("weight").reset_index()
    nxt["weight"] = nxt["weight"].astype("int64")
    co = _co_occurrences(s)
    co = co.assign(event_type_x=co["event_type_x"].astype(str), event_type_y=co["event_type_y"].astype(str))
    return EventParts(did, types, _by_weight(nxt, ["a", "b"]), co.reset_index(drop=True))


def parts_from_graph(nodes: pd.DataFrame, edges: pd.DataFrame) -> EventParts:
    """The behaviour part of a written graph (a full build's or an update's node and edge tables)."""

    def strip(values: pd.Series, prefix: str) -> np.ndarray:
        return values.str.slice(len(prefix)).to_numpy(dtype=object)

    did = edges[edges["kind"] == "did"]
    types = nodes[nodes["kind"] == "event_type"]
    nxt = edges[edges["kind"] == "next"]
    co = edges[edges["kind"] == "co_occurs"]
    return EventParts(
        pd.DataFrame({"person_id": strip(did["src"], "person:"), "event_type": strip(did["dst"], "event_type:"), "weight": did["weight"].to_numpy(dtype="int64"), "last_seen": did["last_seen"].array}),
        pd.DataFrame({"event_type": types["name"].to_numpy(dtype=object), "weight": types["weight"].to_numpy(dtype="int64")}),
        pd.DataFrame({"a": strip(nxt["src"], "event_type:"), "b": strip(nxt["dst"], "event_type:"), "weight": nxt["weight"].to_numpy(dtype="int64")}),
        pd.DataFrame({"event_type_x": strip(co["src"], "event_type:"), "event_type_y": strip(co["dst"], "event_type:"), "weight": co["weight"].to_numpy(dtype="int64")}),
    )  # fmt: skip


def update_event_parts(previous: EventParts, removed: EventParts, added: EventParts, changed: pd.Index) -> EventParts:
    """`previous` with the `changed` persons' contribution replaced: their `did` rows by `added`'s,
    each count minus `removed` (their sessions as `previous` counted them) plus `added` (their
    sessions now)."""

    def counts(name: str, keys: list[str]) -> pd.DataFrame:
        parts = [getattr(previous, name), getattr(removed, name).assign(weight=lambda f: -f["weight"]), getattr(added, name)]
        total = pd.concat([p[[*keys, "weight"]] for p in parts if len(p)], ignore_index=True)
        if not len(total):
            return getattr(previous, name).iloc[:0]
        total = total.groupby(keys, sort=False)["weight"].sum().reset_index()
        total["weight"] = total["weight"].astype("int64")
        if (total["weight"] < 0).any():
            raise ValueError("graph update: a count went below zero; the earlier graph does not match its records (run a full build)")
        return total

    kept = previous.did[~previous.did["person_id"].isin(changed)]
    did = pd.concat([kept, added.did], ignore_index=True) if len(added.did) else kept
    if len(added.did) and len(kept) and did["last_seen"].dtype != added.did["last_seen"].dtype:
        did["last_seen"] = did["last_seen"].astype(added.did["last_seen"].dtype)  # the unit a full build reads from the lake
    did = did.sort_values(["person_id", "event_type"], kind="stable").reset_index(drop=True)
    co = counts("co", ["event_type_x", "event_type_y"])
    co = co[co["weight"] > 0].sort_values(["event_type_x", "event_type_y"]).reset_index(drop=True)
    return EventParts(did, _by_weight(counts("types", ["event_type"]), ["event_type"]), _by_weight(counts("nxt", ["a", "b"]), ["a", "b"]), co)


SEQUENCE_KINDS = {"next": 1, "seq": 2, "co": 3, "did": 4}  # a full build's order of the sequence signal kinds


def merge_sequence_signals(previous: pd.DataFrame, added: pd.DataFrame, changed: pd.Index) -> pd.DataFrame:
    """The sequence signals (categorical, `sequence_signals` order) of `previous` with the
    `changed` persons' rows replaced by `added` (`sequence_signals` of their sessions): the rows a
    full build gives, in its order (by kind; within a kind persons in session order, `person|...`
    as text; each person's rows as their own sessions order them)."""
    kept = previous[~previous["person_id"].isin(changed)]
    merged = concat_sequence_signals([kept, added])
    return previous.iloc[:0] if merged is None else merged


def concat_sequence_signals(parts: list[pd.DataFrame], ordered: bool = False) -> pd.DataFrame | None:
    """The sequence signals of disjoint sets of persons (each person's rows in one part, as
    `sequence_signals` orders them) as one categorical table in a full build's order: by kind;
    within a kind persons in `person|` text order; each person's rows in their part's order.
    `ordered`: every part's persons come before the next part's in that text order (person
    buckets), so a stable sort by kind alone gives that order. None when every part is empty."""
    from pandas.api.types import union_categoricals

    parts = [p for p in parts if len(p)]
    if not parts:
        return None
    cols = {c: union_categoricals([pd.Categorical(p[c].astype(object)) if not isinstance(p[c].dtype, pd.CategoricalDtype) else p[c].array for p in parts]) for c in ("person_id", "signal")}
    kind_of = np.array([SEQUENCE_KINDS.get(str(v).split(":", 1)[0], 0) for v in cols["signal"].categories], dtype=np.int8)
    if ordered:
        order = np.argsort(kind_of[cols["signal"].codes], kind="stable")
    else:
        person_key = np.array([f"{v}|" for v in cols["person_id"].categories], dtype=object)
        rank = np.empty(len(person_key), dtype=np.int64)
        rank[np.argsort(person_key, kind="stable")] = np.arange(len(person_key))
        position = np.concatenate([np.arange(len(p), dtype=np.int64) for p in parts])
        order = np.lexsort((position, rank[cols["person_id"].codes], kind_of[cols["signal"].codes]))
    return pd.DataFrame({c: v.take(order) for c, v in cols.items()})


def combine_event_parts(parts: list[EventParts]) -> EventParts:
    """The behaviour part of all events from `event_parts` of disjoint sets of persons (each
    person's sessions in one part): `did` rows in (person, type) order, every count summed, the
    count tables in canonical order: what `event_parts` gives on all the sessions at once."""
    parts = [p for p in parts if len(p.did)] or parts[:1]
    if len(parts) == 1:
        return parts[0]

    def summed(name: str, keys: list[str]) -> pd.DataFrame:
        total = pd.concat([getattr(p, name)[[*keys, "weight"]] for p in parts], ignore_index=True)
        total = total.groupby(keys, sort=False)["weight"].sum().reset_index()
        total["weight"] = total["weight"].astype("int64")
        return total

    did = pd.concat([p.did for p in parts], ignore_index=True).sort_values(["person_id", "event_type"], kind="stable").reset_index(drop=True)
    co = summed("co", ["event_type_x", "event_type_y"])
    co = co[co["weight"] > 0].sort_values(["event_type_x", "event_type_y"]).reset_index(drop=True)
    return EventParts(did, _by_weight(summed("types", ["event_type"]), ["event_type"]), _by_weight(summed("nxt", ["a", "b"]), ["a", "b"]), co)


def build_graph(
    assignments: pd.DataFrame,
    events: pd.DataFrame,
    text_intents: pd.DataFrame,
    intents: pd.DataFrame,
    exposures: pd.DataFrame,
    sessions: pd.DataFrame | None = None,
    parts: "EventParts | None" = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(nodes, edges) of the persona graph.

    assignments: person_id, persona_id, persona_name, confidence; events: person_id, event_type,
    event_time, session_id; text_intents: person_id, source, source_key, intent_id, event_time;
    intents: intent_id, label, n_texts; exposures: person_id, campaign, converted, event_time, cat__arm;
    sessions: `session_frame(events)` when the caller already has it (it is not built twice);
    parts: `event_parts(sessions)` (or an incremental run's `update_event_parts`) instead of both.
    """
    edges = []
    persons = pd.Index(assignments["person_id"].astype(str).unique())
    nodes = [pd.DataFrame({"node_id": "person:" + persons, "kind": "person", "name": persons, "weight": 1.0})]
    # persona membership
    personas = assignments.dropna(subset=["persona_id"]).copy()
    personas["persona_node"] = "persona:" + personas["persona_id"].astype(int).astype(str)
    sizes = personas.groupby(["persona_node", "persona_name"]).size().reset_index(name="weight")
    nodes.append(pd.DataFrame({"node_id": sizes["persona_node"], "kind": "persona", "name": sizes["persona_name"].astype(str), "weight": sizes["weight"].astype(float)}))
    edges.append(_edges(pd.DataFrame({"src": "person:" + personas["person_id"].astype(str), "dst": personas["persona_node"], "weight": personas["confidence"].fillna(0.0)}), "belongs_to"))
    # behaviour: did, co_occurs, next
    if parts is None:
        parts = event_parts(session_frame(events) if sessions is None else sessions)
    if len(parts.did):
        did = parts.did
        edges.append(_edges(pd.DataFrame({"src": "person:" + did["person_id"].astype(str), "dst": "event_type:" + did["event_type"].astype(str), "weight": did["weight"], "last_seen": did["last_seen"]}), "did"))
        counts = parts.types
        nodes.append(pd.DataFrame({"node_id": "event_type:" + counts["event_type"], "kind": "event_type", "name": counts["event_type"], "weight": counts["weight"].to_numpy(dtype=float)}))
        nxt = parts.nxt
        edges.append(_edges(pd.DataFrame({"src": "event_type:" + nxt["a"], "dst": "event_type:" + nxt["b"], "weight": nxt["weight"]}), "next"))
        co = parts.co
        edges.append(_edges(pd.DataFrame({"src": "event_type:" + co["event_type_x"], "dst": "event_type:" + co["event_type_y"], "weight": co["weight"]}), "co_occurs"))
    # language: intents, tickets, mentions
    if len(text_intents):
        ti = text_intents.copy()
        ti["intent_node"] = "intent:" + ti["intent_id"].astype(int).astype(str)
        nodes.append(pd.DataFrame({"node_id": "intent:" + intents["intent_id"].astype(int).astype(str), "kind": "intent", "name": intents["label"].astype(str), "weight": intents["n_texts"].astype(float)}))
        men = ti.groupby(["person_id", "intent_node"]).agg(weight=("text", "size"), last_seen=("event_time", "max")).reset_index()
        edges.append(_edges(pd.DataFrame({"src": "person:" + men["person_id"].astype(str), "dst": men["intent_node"], "weight": men["weight"], "last_seen": men["last_seen"]}), "mentions"))
        tk = ti[ti["source_kind"] == "tickets"] if "source_kind" in ti.columns else ti[ti["source"].astype(str).str.contains("ticket")]
        if len(tk):
            ticket = "ticket:" + tk["source"].astype(str) + "/" + tk["source_key"].astype(str)
            nodes.append(pd.DataFrame({"node_id": ticket, "kind": "ticket", "name": tk["source_key"].astype(str), "weight": 1.0}))
            edges.append(_edges(pd.DataFrame({"src": "person:" + tk["person_id"].astype(str), "dst": ticket, "last_seen": tk["event_time"]}), "filed"))
            edges.append(_edges(pd.DataFrame({"src": ticket, "dst": tk["intent_node"], "last_seen": tk["event_time"]}), "about"))
    # campaigns: exposed_to, converted, held_out
    if len(exposures):
        ex = exposures.copy()
        arm = ex["cat__arm"].fillna("").astype(str).str.lower() if "cat__arm" in ex.columns else pd.Series("", index=ex.index)
        ex["holdout"] = arm.eq("holdout")
        ex["converted"] = ex["converted"].fillna(0).astype(float)
        if "event_time" not in ex.columns:
            ex["event_time"] = pd.NaT
        per = ex.groupby(["person_id", "campaign", "holdout"]).agg(weight=("converted", "size"), conv=("converted", "max"), last_seen=("event_time", "max")).reset_index()
        camps = ex["campaign"].astype(str).value_counts()
        nodes.append(pd.DataFrame({"node_id": "campaign:" + camps.index, "kind": "campaign", "name": camps.index, "weight": camps.to_numpy(dtype=float)}))
        src, dst = "person:" + per["person_id"].astype(str), "campaign:" + per["campaign"].astype(str)
        expo, hold = ~per["holdout"], per["holdout"]
        edges.append(_edges(pd.DataFrame({"src": src[expo], "dst": dst[expo], "weight": per["weight"][expo], "last_seen": per["last_seen"][expo]}), "exposed_to"))
        conv = expo & (per["conv"] > 0)
        edges.append(_edges(pd.DataFrame({"src": src[conv], "dst": dst[conv], "last_seen": per["last_seen"][conv]}), "converted"))
        edges.append(_edges(pd.DataFrame({"src": src[hold], "dst": dst[hold], "weight": per["weight"][hold], "last_seen": per["last_seen"][hold],
                                          "attr": np.where(per["conv"][hold] > 0, "converted", "")}), "held_out"))  # fmt: skip
    node_table = pd.concat(nodes, ignore_index=True).drop_duplicates("node_id").reset_index(drop=True)
    node_table["weight"] = node_table["weight"].astype(float)
    edge_table = pd.concat(edges, ignore_index=True) if edges else pd.DataFrame(columns=EDGE_COLUMNS)
    return node_table[NODE_COLUMNS], edge_table.reset_index(drop=True)


def person_signals(sessions: pd.DataFrame, text_intents: pd.DataFrame, intents: pd.DataFrame, categorical: bool = False) -> pd.DataFrame:
    """Every graph signal each person shows (person_id, signal): sequence signals + `intent:<label>`.
    `categorical`: the same rows in the same order, both columns as categoricals (see sequence_signals)."""
    return combine_signals([sequence_signals(sessions, categorical), intent_signals(text_intents, intents)], categorical)


def intent_signals(text_intents: pd.DataFrame, intents: pd.DataFrame) -> pd.DataFrame:
    """`intent:<label>` of each text's person (person_id, signal; one row per text)."""
    if not len(text_intents):
        return pd.DataFrame(columns=["person_id", "signal"])
    label_of = intents.set_index("intent_id")["label"]
    return pd.DataFrame({"person_id": text_intents["person_id"], "signal": "intent:" + text_intents["intent_id"].map(label_of).astype(str)})


def combine_signals(parts: list[pd.DataFrame], categorical: bool = False) -> pd.DataFrame:
    """[sequence signals, intent signals] one after the other, duplicates dropped (person_signals'
    last step). The sequence signals are unique already and share no row with the intent ones
    (another prefix), so only the intent rows are deduplicated: the rows and order of a
    drop_duplicates over both (that hashed millions of sequence rows for nothing)."""
    parts = [parts[0], *(p.drop_duplicates() for p in parts[1:])]
    if not categorical:
        return pd.concat(parts, ignore_index=True).reset_index(drop=True)
    from pandas.api.types import union_categoricals

    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame({"person_id": pd.Categorical([]), "signal": pd.Categorical([])})
    columns = {c: union_categoricals([pd.Categorical(p[c].astype(object)) if not isinstance(p[c].dtype, pd.CategoricalDtype) else p[c].array for p in parts]) for c in ("person_id", "signal")}
    return pd.DataFrame(columns)


@dataclass
class SignalMatrix:
    """Persons x signals 0/1 as a sparse uint8 CSR matrix (`values`, sorted indices) with its
    `index` (persons) and `columns` (signals): signal_matrix's cells without the dense persons x
    signals array (GBs at a million persons and thousands of signals)."""

    values: object
    index: pd.Index
    columns: pd.Index

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.index), len(self.columns))

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "SignalMatrix":
        from scipy import sparse

        return cls(sparse.csr_matrix(frame.to_numpy(dtype=np.uint8)), frame.index, frame.columns)

    def take_rows(self, mask: np.ndarray) -> "SignalMatrix":
        """The persons where `mask` (bool, one per person) holds."""
        return SignalMatrix(self.values[np.flatnonzero(mask)], self.index[mask], self.columns)

    def select(self, names: list) -> "SignalMatrix":
        """Only the signal columns `names`, in that order."""
        at = self.columns.get_indexer(names)
        return SignalMatrix(self.values[:, at], self.index, self.columns[at])

    def column(self, name) -> np.ndarray:
        """One signal's 0/1 (uint8) per person."""
        return self.values[:, self.columns.get_loc(name)].toarray().ravel()

    def to_frame(self) -> pd.DataFrame:
        m = np.zeros(self.shape, dtype="uint8")
        coo = self.values.tocoo()
        m[coo.row, coo.col] = 1
        return pd.DataFrame(m, index=self.index, columns=self.columns)


def signal_matrix(signals: pd.DataFrame, persons: pd.Index, min_persons: int = 10, max_share: float = 0.95) -> pd.DataFrame:
    """Persons x signals, 0/1 (uint8), keeping signals shown by at least `min_persons` people and
    by at most `max_share` (0-1) of them (near-universal signals say nothing)."""
    if signals.empty:
        return pd.DataFrame(index=persons)
    return signal_sparse(signals, persons, min_persons, max_share).to_frame()


def signal_sparse(signals: pd.DataFrame, persons: pd.Index, min_persons: int = 10, max_share: float = 0.95) -> SignalMatrix:
    """signal_matrix's cells as a SignalMatrix (sparse)."""
    from scipy import sparse

    if signals.empty:
        return SignalMatrix(sparse.csr_matrix((len(persons), 0), dtype=np.uint8), persons, pd.Index([], dtype=object, name="signal"))
    # On integer codes (object or categorical columns alike): a string groupby and isin over tens
    # of millions of rows were most of the stage at 100k people. Same columns and cells as
    # "support = distinct people per signal; keep; fill the kept (person, signal) pairs".
    p_codes, p_values = pd.factorize(signals["person_id"])
    s_codes, s_values = pd.factorize(signals["signal"])
    p_values, s_values = np.asarray(p_values, dtype=object), np.asarray(s_values, dtype=object)
    width = max(len(s_values), 1)
    # distinct (person, signal) pairs by hashing (pd.unique): np.unique sorted them, 14 CPU s for
    # 4.6 million pairs here against 1.1 s (the counts below do not depend on the order)
    pairs = pd.unique(p_codes.astype(np.int64) * width + s_codes)
    del p_codes, s_codes
    sigs = (pairs % width).astype(np.int64)
    support = np.bincount(sigs, minlength=len(s_values))
    keep = (support >= min_persons) & (support <= max_share * len(persons))
    rows = persons.get_indexer(p_values)[pairs // width]
    del pairs
    valid = keep[sigs] & (rows >= 0)
    rows, sigs = rows[valid], sigs[valid]
    columns = pd.Index(np.sort(s_values[np.flatnonzero(np.bincount(sigs, minlength=len(s_values)))]), name="signal")  # the kept codes shown, ascending
    cols = columns.get_indexer(s_values)[sigs]
    values = sparse.csr_matrix((np.ones(len(rows), dtype=np.uint8), (rows, cols)), shape=(len(persons), len(columns)))  # the pairs are distinct: no sums
    values.sort_indices()
    return SignalMatrix(values, persons, columns)


def graph_features(matrix: "pd.DataFrame | SignalMatrix", mix: pd.DataFrame, churned: pd.Series | None, as_of: pd.Timestamp) -> pd.DataFrame:
    """Per person graph features: `intent_centrality` (mention-weighted share of people who share
    the person's intents, 0-1), `n_sequence_patterns` (3-step sequences shown), `n_signals`, and
    `neighbourhood_churn_rate` (churn rate of the other people sharing the person's signals,
    leave-one-out, 0-1; NaN without labels)."""
    persons = matrix.index
    out = pd.DataFrame(index=persons)
    intent_cols = [c for c in mix.columns if c.startswith("intent_")] if len(mix) else []
    if intent_cols:
        m = mix.set_index("person_id")[intent_cols].reindex(persons).fillna(0.0)
        popularity = (m > 0).mean(axis=0)
        out["intent_centrality"] = (m * popularity).sum(axis=1)
    else:
        out["intent_centrality"] = 0.0
    from scipy import sparse

    # 0/1 cells as a sparse matrix (a dense persons x signals array was GBs at a million persons);
    # every sum below adds integers, so it is what the dense sums were
    values = matrix.values if isinstance(matrix, SignalMatrix) else sparse.csr_matrix(matrix.to_numpy(dtype=np.uint8))
    seq = np.fromiter((str(c).startswith("seq:") for c in matrix.columns), dtype=bool, count=len(matrix.columns))
    out["n_sequence_patterns"] = np.asarray(values[:, np.flatnonzero(seq)].sum(axis=1, dtype=np.int64)).ravel() if seq.any() else 0
    out["n_signals"] = np.asarray(values.sum(axis=1, dtype=np.int64)).ravel()
    if churned is not None and len(matrix.columns):
        y = churned.reindex(persons)
        known = y.notna().to_numpy()
        yv = np.nan_to_num(y.to_numpy(dtype=float))
        # Sparse: a dense float copy is persons x signals x 8 bytes (GBs at 100k persons). The
        # products sum integers, so they are exactly what the dense ones were.
        x = sparse.csr_matrix(values, dtype=np.float64)
        churners = x[known].T @ yv[known]  # per signal: churners showing it
        members = np.asarray(x[known].sum(axis=0)).ravel()
        # leave-one-out: remove the person's own label from every signal they show
        shown = np.asarray(x.sum(axis=1)).ravel()
        num = x @ churners - shown * np.where(known, yv, 0.0)
        den = x @ members - shown * known
        out["neighbourhood_churn_rate"] = np.where(den > 0, num / np.maximum(den, 1), np.nan)
    else:
        out["neighbourhood_churn_rate"] = np.nan
    out["event_timestamp"] = as_of
    out["created"] = as_of
    return out.rename_axis("person_id").reset_index()


# --- I/O edge ---------------------------------------------------------------------------------
def graph_dir(ws: Workspace, run_id: str) -> Path:
    return ws.lake / "graph" / f"run_id={run_id}"


def write_graph(ws: Workspace, run_id: str, nodes: pd.DataFrame, edges: pd.DataFrame, rows_per_group: int = 1 << 20) -> dict[str, str]:
    """Write this run's node and edge tables to the lake (atomically each); return their paths.
    A table longer than `rows_per_group` goes to Arrow one row group at a time (the same schema and
    values as `to_parquet`; an Arrow copy of every edge at once was ~1 GB at a million people)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = graph_dir(ws, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, table in (("nodes", nodes), ("edges", edges)):
        path = folder / f"{name}.parquet"
        tmp = folder / f".{name}.parquet.tmp"
        if len(table) <= rows_per_group:
            table.to_parquet(tmp, index=False)
        else:
            schema = pa.Schema.from_pandas(table.iloc[:1000], preserve_index=False)  # types from the dtypes (object columns: strings)
            with pq.ParquetWriter(tmp, schema) as writer:
                for start in range(0, len(table), rows_per_group):
                    writer.write_table(pa.Table.from_pandas(table.iloc[start : start + rows_per_group], schema=schema, preserve_index=False))
        tmp.replace(path)
        paths[name] = str(path)
    return paths


def latest_graph_run(ws: Workspace) -> str | None:
    """The newest run id with a graph in the lake (run ids sort by time)."""
    root = ws.lake / "graph"
    runs = sorted(p.name.split("=", 1)[1] for p in root.glob("run_id=*") if (p / "edges.parquet").exists()) if root.is_dir() else []
    return runs[-1] if runs else None


def query(ws: Workspace, sql: str, run_id: str | None = None) -> pd.DataFrame:
    """Run DuckDB SQL over a run's graph, with views `nodes` and `edges` (default: the latest run)."""
    import duckdb

    from personaops.errors import NotFoundError

    run_id = run_id or latest_graph_run(ws)
    if run_id is None or not (graph_dir(ws, run_id) / "edges.parquet").exists():
        raise NotFoundError(f"No persona graph in {ws.lake / 'graph'}; run `personas run` first.")
    con = duckdb.connect()
    try:
        for name in ("nodes", "edges"):
            path = str(graph_dir(ws, run_id) / f"{name}.parquet").replace("'", "''")  # a view cannot take parameters
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{path}')")
        con.execute("SET TimeZone = 'UTC'")
        frame = con.execute(sql).df()
        for col in frame.columns:  # lake times are UTC; DuckDB hands timestamptz back without a zone
            if pd.api.types.is_datetime64_dtype(frame[col]) and getattr(frame[col].dt, "tz", None) is None:
                frame[col] = frame[col].dt.tz_localize("UTC")
        return frame
    finally:
        con.close()


def to_networkx(nodes: pd.DataFrame, edges: pd.DataFrame):
    """A networkx MultiDiGraph: node attributes kind/name/weight, one edge per row keyed by kind."""
    import networkx as nx

    g = nx.MultiDiGraph()
    g.add_nodes_from((r.node_id, {"kind": r.kind, "name": r.name, "weight": float(r.weight)}) for r in nodes.itertuples(index=False))
    g.add_edges_from(
        (r.src, r.dst, r.kind, {"kind": r.kind, "weight": float(r.weight), "last_seen": r.last_seen, "attr": r.attr})
        for r in edges.itertuples(index=False)
    )
    return g


def load_networkx(ws: Workspace, run_id: str | None = None):
    """The graph of a run (default: the latest) as a networkx MultiDiGraph."""
    run_id = run_id or latest_graph_run(ws)
    nodes = query(ws, "SELECT * FROM nodes", run_id)
    edges = query(ws, "SELECT * FROM edges", run_id)
    return to_networkx(nodes, edges)
