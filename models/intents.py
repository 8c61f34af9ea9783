"""Intents: topics mined from ticket and survey texts.

The distinct texts' sentence embeddings (the features stage's cached all-MiniLM-L6-v2 vectors)
are clustered by Ward agglomerative clustering (a topic is what is said, so each distinct text
counts once). The number of intents comes from the data: the cut of the Ward tree with the
highest mean silhouette (cosine) among 2..`k_max` clusters, unless a fixed `k` is asked for.
A fixed k of 12 used to merge a small, sharp topic (five cancel/refund sentences, written by
10% of people) into a broad neighbour; the silhouette-chosen cut keeps it apart.
Each cluster is an intent, labelled with its most distinctive terms by class-based TF-IDF
(c-TF-IDF: a term's frequency in the intent's texts, weighted by how rare it is across intents).
Each text gets its intent; each person gets an intent mix (share of their texts per intent, 0-1).
Above TREE_MAX distinct texts the tree is built on a seeded sample of that many and every text
joins the intent with the nearest centroid.
A later run that adds a few new distinct texts keeps the intents (keep_intents: same ids, labels
and terms, so the signals and flag models built on them stay valid); new texts join the nearest
intent. The insights stage decides when to mine again (personaops/insights.py, intents_stage).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

LABEL_TERMS = 3  # terms in an intent's label


@dataclass
class Intents:
    """The mined intents (intent_id, label, terms, n_texts, n_persons, example) and each text's intent."""

    table: pd.DataFrame
    text_intents: pd.DataFrame  # person_id, source, source_key, event_time, text, intent_id, intent_label
    choice: Choice | None = None


TREE_MAX = 4000  # distinct texts the Ward tree is built on (memory grows with the square)
SILHOUETTE_SAMPLE = 2000  # texts the silhouette of each cut is measured on


@dataclass
class Choice:
    """How the number of intents was chosen: `k`, its `silhouette`, `method` ("silhouette" or
    "fixed") and the silhouette of every cut tried (`scores`, k -> mean silhouette)."""

    k: int
    silhouette: float
    method: str
    scores: dict[int, float]


def _unit(vectors: np.ndarray) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cluster_texts(vectors: np.ndarray, k: int = 0, k_max: int = 60, seed: int = 42) -> tuple[np.ndarray, Choice]:
    """(intent of each row, how k was chosen): Ward clustering of the unit vectors, cut at `k`
    clusters, or (k = 0) at the count among 2..k_max with the highest mean cosine silhouette."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from sklearn.metrics import silhouette_score

    x = _unit(vectors)
    n = len(x)
    if n < 3 or (k and k <= 1):
        return np.zeros(n, dtype=np.int64), Choice(1, float("nan"), "fixed" if k else "silhouette", {})
    rng = np.random.default_rng(seed)
    tree_rows = np.sort(rng.choice(n, TREE_MAX, replace=False)) if n > TREE_MAX else np.arange(n)
    tree = linkage(x[tree_rows], method="ward")  # Euclidean on unit vectors: cosine geometry
    m = len(tree_rows)
    sample = np.sort(rng.choice(m, SILHOUETTE_SAMPLE, replace=False)) if m > SILHOUETTE_SAMPLE else np.arange(m)
    xs = x[tree_rows][sample]
    distance = np.clip(1.0 - xs @ xs.T, 0.0, 2.0)
    np.fill_diagonal(distance, 0.0)

    def cut(count: int) -> np.ndarray:
        return fcluster(tree, count, criterion="maxclust").astype(np.int64) - 1

    def silhouette(labels: np.ndarray) -> float:
        ls = labels[sample]
        return float(silhouette_score(distance, ls, metric="precomputed")) if 1 < len(np.unique(ls)) < len(ls) else float("nan")

    if k:
        best = min(k, m)
        labels = cut(best)
        choice = Choice(int(labels.max() + 1), silhouette(labels), "fixed", {})
    else:
        scores = {c: silhouette(cut(c)) for c in range(2, min(k_max, m - 1) + 1)}
        scores = {c: s for c, s in scores.items() if s == s}
        best = max(scores, key=lambda c: (scores[c], -c)) if scores else 1
        labels = cut(best) if scores else np.zeros(m, dtype=np.int64)
        choice = Choice(int(labels.max() + 1), scores.get(best, float("nan")), "silhouette", {int(c): round(s, 4) for c, s in scores.items()})
    if m == n:
        return labels, choice
    centroids = _unit(np.vstack([x[tree_rows][labels == c].mean(axis=0) for c in range(labels.max() + 1)]))
    return np.argmax(x @ centroids.T, axis=1).astype(np.int64), choice


def ctfidf_terms(docs: pd.Series, classes: pd.Series, n_terms: int = 10) -> dict[int, list[str]]:
    """Most distinctive terms of each class by c-TF-IDF (BERTopic's formulation:
    tf_{t,c} * log(1 + A / f_t), A = mean words per class, f_t = frequency of t over all classes)."""
    from sklearn.feature_extraction.text import CountVectorizer

    joined = docs.fillna("").groupby(classes).agg(" ".join)
    try:
        vec = CountVectorizer(stop_words="english", token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b")
        counts = vec.fit_transform(joined.to_numpy()).toarray().astype(float)
    except ValueError:  # only stop words / no terms at all
        return {int(c): [] for c in joined.index}
    terms = np.asarray(vec.get_feature_names_out())
    tf = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    avg_words = counts.sum() / max(len(joined), 1)
    idf = np.log(1 + avg_words / np.maximum(counts.sum(axis=0), 1))
    score = tf * idf
    out = {}
    for row, cls in enumerate(joined.index):
        order = np.argsort(-score[row])
        out[int(cls)] = [str(terms[j]) for j in order[:n_terms] if score[row, j] > 0]
    return out


def mine_intents(texts: pd.DataFrame, vectors: np.ndarray, k: int = 0, seed: int = 42, k_max: int = 60) -> Intents:
    """Intents of `texts` (person_id, source, source_key, event_time, text; rows aligned with
    `vectors`). Distinct texts are clustered once each (k = 0: the number chosen by silhouette
    among 2..k_max); labels weigh every occurrence."""
    if texts.empty:
        empty = pd.DataFrame(columns=["intent_id", "label", "terms", "n_texts", "n_persons", "example"])
        return Intents(empty, texts.assign(intent_id=pd.Series(dtype="int64"), intent_label=pd.Series(dtype="string")))
    codes, uniques = pd.factorize(texts["text"].astype(str))
    first = pd.Series(np.arange(len(codes))).groupby(codes).first().to_numpy()
    labels, choice = cluster_texts(vectors[first], k, k_max, seed)
    intent = labels[codes]
    terms = ctfidf_terms(texts["text"].astype(str).reset_index(drop=True), pd.Series(intent))
    label_of = {c: "/".join(t[:LABEL_TERMS]) or f"intent_{c}" for c, t in terms.items()}
    # Two intents can share a label when their terms tie; keep labels unique (they are signal names).
    seen: dict[str, int] = {}
    for c in sorted(label_of):
        base = label_of[c]
        seen[base] = seen.get(base, 0) + 1
        if seen[base] > 1:
            label_of[c] = f"{base}#{seen[base]}"
    return _intents(texts, intent, label_of, {c: ", ".join(t) for c, t in terms.items()}, choice)


def _intents(texts: pd.DataFrame, intent: np.ndarray, label_of: dict[int, str], terms_of: dict[int, str], choice: Choice | None) -> Intents:
    """Each text with its intent, and the intents' table counted over every occurrence."""
    text_intents = texts.reset_index(drop=True).copy()
    text_intents["intent_id"] = intent.astype("int64")
    text_intents["intent_label"] = text_intents["intent_id"].map(label_of).astype("string")
    grouped = text_intents.groupby("intent_id")
    table = pd.DataFrame(
        {
            "label": pd.Series(label_of).sort_index(),
            "terms": pd.Series(terms_of).sort_index(),
            "n_texts": grouped.size(),
            "n_persons": grouped["person_id"].nunique(),
            "example": grouped["text"].agg(lambda s: s.value_counts().index[0]),
        }
    ).rename_axis("intent_id").reset_index()
    table = table[table["n_texts"].fillna(0) > 0].sort_values("n_texts", ascending=False).reset_index(drop=True)
    table["n_texts"] = table["n_texts"].astype("int64")
    table["n_persons"] = table["n_persons"].astype("int64")
    return Intents(table, text_intents, choice)


def keep_intents(texts: pd.DataFrame, table: pd.DataFrame, known: pd.Series, encode) -> tuple[Intents, int]:
    """The earlier intents (`table`: ids, labels, terms) over `texts` without mining again: a text
    mined before keeps its intent (`known`: text -> intent_id), a new distinct text joins the
    intent with the nearest centroid (mean unit vector of the intent's known distinct texts;
    `encode(list of texts) -> vectors`, the cached embedder). Counts and examples are recounted
    over every occurrence. Returns (intents, new distinct texts)."""
    text = texts["text"].astype(str)
    ids = set(table["intent_id"].astype("int64"))
    known = known[known.isin(ids)]
    intent = text.map(known)
    new = pd.unique(text[intent.isna()])
    if len(new):
        old = known.index.to_numpy()
        x = _unit(np.asarray(encode(list(old)), dtype=np.float32))
        of = known.to_numpy(dtype=np.int64)
        order = np.unique(of)
        centroids = _unit(np.vstack([x[of == c].mean(axis=0) for c in order]))
        nearest = order[np.argmax(_unit(np.asarray(encode(list(new)), dtype=np.float32)) @ centroids.T, axis=1)]
        intent = intent.fillna(text.map(pd.Series(nearest, index=new)))
    label_of = {int(i): str(v) for i, v in zip(table["intent_id"], table["label"])}
    terms_of = {int(i): str(v) for i, v in zip(table["intent_id"], table["terms"])}
    return _intents(texts, intent.to_numpy(dtype=np.int64), label_of, terms_of, None), int(len(new))


def intent_mix(text_intents: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Per person: share of their texts per intent (`intent_<id>`, 0-1), `n_intent_texts`, `top_intent`."""
    if text_intents.empty:
        return pd.DataFrame(columns=["person_id", "n_intent_texts", "top_intent"])
    # the table pd.crosstab gives (sorted persons x sorted intents, int64 counts), counted by a
    # groupby: crosstab counts each cell with a Python call (seconds at 100k people)
    counts = text_intents.groupby(["person_id", "intent_id"]).size().unstack(fill_value=0).astype("int64")
    shares = counts.div(counts.sum(axis=1), axis=0)
    label_of = table.set_index("intent_id")["label"]
    out = pd.DataFrame(index=shares.index)
    out["n_intent_texts"] = counts.sum(axis=1).astype("int64")
    out["top_intent"] = shares.idxmax(axis=1).map(label_of).astype("string")
    shares.columns = [f"intent_{int(c)}" for c in shares.columns]
    return out.join(shares).rename_axis("person_id").reset_index()
