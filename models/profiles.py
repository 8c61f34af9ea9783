"""Persona profiles: size, distinguishing traits, a data-driven name and description, KPIs with
intervals, and representative quotes (the texts nearest the persona's text centroid, via faiss).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

STOP = {
    "the", "and", "for", "with", "this", "that", "our", "you", "your", "are", "was", "but", "not", "has", "have",
    "when", "what", "how", "can", "get", "every", "time", "after", "again", "more", "most", "all", "any", "its",
    "it's", "use", "just", "from", "into", "than", "too", "very", "much", "there", "they", "them", "their", "does",
    "did", "will", "would", "could", "should", "about", "great", "good", "need", "keeps", "really", "since",
    "last", "today", "please", "thanks", "one", "open", "make", "also", "otherwise", "only", "okay", "nothing",
}  # fmt: skip


NON_LABEL_OUTCOMES = ("n_exposures", "n_conversions", "score_mean")


def humanise(column: str) -> str:
    if column.startswith("share_"):
        return column[len("share_") :].replace("_", " ") + " events"
    if "__" in column:  # an indicator of a categorical attribute's value
        attr, value = column.split("__", 1)
        return f"{attr.replace('_', ' ')} = {value.replace('_', ' ')}"
    return {
        "n_events": "activity", "n_sessions": "sessions", "active_days": "active days",
        "events_per_session": "events per session", "days_since_last_event": "days since last visit",
        "n_tickets": "support tickets", "days_since_last_ticket": "days since last ticket",
        "mean_ticket_chars": "ticket length", "n_surveys": "survey answers", "score_mean": "survey score",
        "score_last": "latest survey score",
    }.get(column, column.replace("_", " "))  # fmt: skip


def wilson(successes: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (bounds in 0-1)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: pd.Series, z: float = 1.96) -> tuple[float, float, float]:
    v = values.dropna().astype(float)
    if len(v) == 0:
        return (float("nan"),) * 3
    half = z * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return (float(v.mean()), float(v.mean() - half), float(v.mean() + half))


def distinctive_terms(texts: pd.DataFrame, labels: pd.Series, top: int = 5) -> dict[int, list[str]]:
    """Class-based TF-IDF: words frequent in a persona's texts and rare in the others'."""
    from sklearn.feature_extraction.text import CountVectorizer

    if texts.empty:
        return {}
    docs = texts.assign(persona=texts["person_id"].map(labels)).dropna(subset=["persona"])
    grouped = docs.groupby("persona")["text"].apply(lambda s: " ".join(s))
    if grouped.empty:
        return {}
    vectorizer = CountVectorizer(token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z0-9]{2,}\b", stop_words=list(STOP), lowercase=True)
    try:
        counts = vectorizer.fit_transform(grouped.to_numpy()).toarray().astype(float)
    except ValueError:  # no terms at all
        return {}
    tf = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    avg = counts.sum() / len(grouped)
    idf = np.log(1 + avg / np.maximum(counts.sum(axis=0), 1))
    scores = tf * idf
    vocab = np.array(vectorizer.get_feature_names_out())
    return {int(p): [str(vocab[j]) for j in np.argsort(-scores[i])[:top] if scores[i, j] > 0] for i, p in enumerate(grouped.index)}


def traits(inputs: pd.DataFrame, labels: pd.Series, persona: int, top: int) -> list[dict]:
    """Standardised mean differences (persona vs population) of each model feature, largest first."""
    members = inputs[labels == persona]
    mean_all = inputs.mean()
    std_all = inputs.std(ddof=0).replace(0, np.nan)
    z = ((members.mean() - mean_all) / std_all).dropna()
    order = z.abs().sort_values(ascending=False).index[:top]
    return [
        {"feature": f, "label": humanise(f), "z": round(float(z[f]), 3), "persona_mean": round(float(members[f].mean()), 4), "population_mean": round(float(mean_all[f]), 4)}
        for f in order
    ]


def _name(trait_list: list[dict], terms: list[str]) -> str:
    if not trait_list:
        return "Undifferentiated"
    t = trait_list[0]
    adjective = ("High" if t["z"] > 0 else "Low") if not t["feature"].startswith("days_since") else ("Lapsed" if t["z"] > 0 else "Recent")
    label = t["label"]
    name = f"{adjective} {label}"
    if terms:
        name += f" · {', '.join(terms[:2])}"
    return name[:80]


def quotes(texts: pd.DataFrame, vectors: np.ndarray, labels: pd.Series, persona: int, n: int) -> list[dict]:
    """The `n` distinct texts of a persona nearest its text centroid (cosine, via faiss inner product).
    `vectors`: a row per text (an array, or models.embedder.TextRows: each distinct text's vector once)."""
    import faiss

    mask = (texts["person_id"].map(labels) == persona).to_numpy()
    if not mask.any():
        return []
    own = vectors[mask]
    centroid = own.mean(axis=0, keepdims=True)
    centroid /= max(np.linalg.norm(centroid), 1e-12)
    index = faiss.IndexFlatIP(own.shape[1])
    index.add(np.ascontiguousarray(own, dtype=np.float32))
    scores, ids = index.search(centroid.astype(np.float32), min(len(own), n * 10))
    subset = texts[mask].reset_index(drop=True)
    out, seen = [], set()
    for score, i in zip(scores[0], ids[0]):
        row = subset.iloc[int(i)]
        key = re.sub(r"\W+", " ", str(row["text"]).lower()).strip()
        if key in seen:
            continue
        seen.add(key)
        out.append({"text": str(row["text"])[:300], "source": row["source"], "source_key": row["source_key"], "similarity": round(float(score), 4)})
        if len(out) == n:
            break
    return out


def build_profiles(
    inputs: pd.DataFrame,
    labels: pd.Series,
    outcomes: pd.DataFrame,
    texts: pd.DataFrame,
    text_vectors: np.ndarray,
    n_traits: int = 5,
    n_quotes: int = 3,
    fixed_names: dict[int, str] | None = None,
) -> list[dict]:
    """One profile per persona. `inputs`: model features by person_id; `labels`: persona per person_id;
    `outcomes`: per person_id label columns (0/1) and n_exposures, n_conversions, score_mean;
    `fixed_names`: names to keep (e.g. a persona carried over from the previous version)."""
    fixed_names = fixed_names or {}
    total = len(labels)
    terms = distinctive_terms(texts, labels)
    profiles = []
    for persona in sorted(labels.unique()):
        members = labels.index[labels == persona]
        trait_list = traits(inputs, labels, persona, n_traits)
        persona_terms = terms.get(int(persona), [])
        kpis: dict[str, dict] = {}
        out = outcomes.reindex(members)
        for label in [c for c in out.columns if c not in NON_LABEL_OUTCOMES]:
            known = out[label].dropna()
            if len(known):
                lo, hi = wilson(known.sum(), len(known))
                kpis[f"{label}_rate"] = {"value": round(float(known.mean()), 4), "ci95": [round(lo, 4), round(hi, 4)], "n": int(len(known))}
        if "n_exposures" in out.columns and out["n_exposures"].fillna(0).sum() > 0:
            exposed, converted = float(out["n_exposures"].fillna(0).sum()), float(out["n_conversions"].fillna(0).sum())
            lo, hi = wilson(converted, exposed)
            kpis["campaign_conversion_rate"] = {"value": round(converted / exposed, 4), "ci95": [round(lo, 4), round(hi, 4)], "n": int(exposed)}
        if "n_events" in inputs.columns and len(members) > 1:  # engagement: product events per person
            m, lo, hi = mean_interval(inputs.loc[members, "n_events"].fillna(0))
            kpis["engagement_events"] = {"value": round(m, 3), "ci95": [round(lo, 3), round(hi, 3)], "n": int(len(members))}
        if "score_mean" in out.columns and out["score_mean"].notna().any():
            m, lo, hi = mean_interval(out["score_mean"])
            kpis["survey_score"] = {"value": round(m, 3), "ci95": [round(lo, 3), round(hi, 3)], "n": int(out["score_mean"].notna().sum())}
        profiles.append(
            {
                "persona_id": int(persona),
                "name": fixed_names.get(int(persona)) or _name(trait_list, persona_terms),
                "size": int(len(members)),
                "share": round(len(members) / max(total, 1), 4),
                "traits": trait_list,
                "terms": persona_terms,
                "kpis": kpis,
                "quotes": quotes(texts, text_vectors, labels, persona, n_quotes) if len(texts) else [],
            }
        )
    seen: dict[str, int] = {}
    for p in profiles:  # names must be unique within a model
        seen[p["name"]] = seen.get(p["name"], 0) + 1
        if seen[p["name"]] > 1:
            p["name"] = f"{p['name']} #{seen[p['name']]}"
    for p in profiles:
        p["description"] = describe(p)
    return profiles


def describe(profile: dict) -> str:
    parts = [f"{profile['size']:,} people ({profile['share']:.0%} of everyone)."]
    if profile["traits"]:
        phrases = [
            f"{'more' if t['z'] > 0 else 'less'} {t['label']} ({t['persona_mean']:.3g} vs {t['population_mean']:.3g})"
            for t in profile["traits"][:3]
        ]
        parts.append("Compared with everyone they show " + ", ".join(phrases) + ".")
    if profile["terms"]:
        parts.append("Their tickets and survey answers talk about " + ", ".join(profile["terms"][:4]) + ".")
    if "engagement_events" in profile["kpis"]:
        k = profile["kpis"]["engagement_events"]
        parts.append(f"Engagement {k['value']:.1f} product events per person (95% CI {k['ci95'][0]:.1f}-{k['ci95'][1]:.1f}).")
    for key, k in profile["kpis"].items():
        if key.endswith("_rate"):
            what = key[: -len("_rate")].replace("_", " ")
            parts.append(f"{what.capitalize()} rate {k['value']:.0%} (95% CI {k['ci95'][0]:.0%}-{k['ci95'][1]:.0%}, n={k['n']:,}).")
    return " ".join(parts)
