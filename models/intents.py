"""Intents: topics mined from ticket and survey texts.

The distinct texts' sentence embeddings (the features stage's cached all-MiniLM-L6-v2 vectors)
are clustered with faiss spherical k-means; each cluster is an intent, labelled with its most
distinctive terms by class-based TF-IDF (c-TF-IDF: a term's frequency in the intent's texts,
weighted by how rare it is across intents). Each text gets its nearest intent; each person gets
an intent mix (share of their texts per intent, 0-1).
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


def cluster_texts(vectors: np.ndarray, k: int, seed: int = 42, iterations: int = 30, restarts: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(intent of each row, centroids) by faiss spherical k-means on unit vectors; k is capped at
    the number of distinct rows."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    k = max(1, min(k, len(x)))
    if k == 1:
        return np.zeros(len(x), dtype=np.int64), x.mean(axis=0, keepdims=True)
    km = faiss.Kmeans(x.shape[1], k, niter=iterations, nredo=restarts, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=100000)  # fmt: skip
    from models.clustering import faiss_threads

    with faiss_threads(len(x)):
        km.train(x)
    _, labels = km.index.search(x, 1)
    return labels[:, 0].astype(np.int64), km.centroids


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


def mine_intents(texts: pd.DataFrame, vectors: np.ndarray, k: int = 12, seed: int = 42) -> Intents:
    """Intents of `texts` (person_id, source, source_key, event_time, text; rows aligned with
    `vectors`). Distinct texts are clustered once each; labels weigh every occurrence."""
    if texts.empty:
        empty = pd.DataFrame(columns=["intent_id", "label", "terms", "n_texts", "n_persons", "example"])
        return Intents(empty, texts.assign(intent_id=pd.Series(dtype="int64"), intent_label=pd.Series(dtype="string")))
    codes, uniques = pd.factorize(texts["text"].astype(str))
    first = pd.Series(np.arange(len(codes))).groupby(codes).first().to_numpy()
    labels, _ = cluster_texts(vectors[first], k, seed)
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
    text_intents = texts.reset_index(drop=True).copy()
    text_intents["intent_id"] = intent.astype("int64")
    text_intents["intent_label"] = text_intents["intent_id"].map(label_of).astype("string")
    grouped = text_intents.groupby("intent_id")
    table = pd.DataFrame(
        {
            "label": pd.Series(label_of).sort_index(),
            "terms": pd.Series({c: ", ".join(t) for c, t in terms.items()}).sort_index(),
            "n_texts": grouped.size(),
            "n_persons": grouped["person_id"].nunique(),
            "example": grouped["text"].agg(lambda s: s.value_counts().index[0]),
        }
    ).rename_axis("intent_id").reset_index()
    table = table[table["n_texts"].fillna(0) > 0].sort_values("n_texts", ascending=False).reset_index(drop=True)
    table["n_texts"] = table["n_texts"].astype("int64")
    table["n_persons"] = table["n_persons"].astype("int64")
    return Intents(table, text_intents)


def intent_mix(text_intents: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Per person: share of their texts per intent (`intent_<id>`, 0-1), `n_intent_texts`, `top_intent`."""
    if text_intents.empty:
        return pd.DataFrame(columns=["person_id", "n_intent_texts", "top_intent"])
    counts = pd.crosstab(text_intents["person_id"], text_intents["intent_id"])
    shares = counts.div(counts.sum(axis=1), axis=0)
    label_of = table.set_index("intent_id")["label"]
    out = pd.DataFrame(index=shares.index)
    out["n_intent_texts"] = counts.sum(axis=1).astype("int64")
    out["top_intent"] = shares.idxmax(axis=1).map(label_of).astype("string")
    shares.columns = [f"intent_{int(c)}" for c in shares.columns]
    return out.join(shares).rename_axis("person_id").reset_index()
