"""Per-person feature tables computed from the lake (pure functions on frames).

Every table has `person_id`, `event_timestamp` (the data's as-of time: the latest accepted
source timestamp, so re-runs on the same inputs write identical tables) and `created`. They are
the offline sources of the Feast feature views in feature_repo/ (entity `person`).
"""

from __future__ import annotations

import re

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


def behaviour_features(events: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Activity and event-type mix per person (counts; days; shares in 0-1)."""
    if events.empty:
        return _stamp(_empty("n_events"), as_of)
    ev = events.copy()
    ev["day"] = ev["event_time"].dt.floor("D")
    grouped = ev.groupby("person_id")
    out = pd.DataFrame({"n_events": grouped.size().astype("int64")})
    if "session_id" in ev.columns and ev["session_id"].notna().any():
        sessions = ev["session_id"].fillna("day:" + ev["day"].astype(str))
    else:
        sessions = "day:" + ev["day"].astype(str)
    out["n_sessions"] = ev.assign(_s=sessions).groupby("person_id")["_s"].nunique().astype("int64")
    out["active_days"] = grouped["day"].nunique().astype("int64")
    out["events_per_session"] = out["n_events"] / out["n_sessions"].clip(lower=1)
    out["days_since_last_event"] = (as_of - grouped["event_time"].max()).dt.total_seconds() / 86400.0
    top = ev["event_type"].value_counts().index[:MAX_EVENT_TYPES]
    types = ev["event_type"].where(ev["event_type"].isin(top), "other")
    counts = pd.crosstab(ev["person_id"], types)
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
    out = pd.concat(parts, axis=1)
    return out.T.groupby(level=0).last().T.rename_axis("person_id").reset_index()


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


def current_model_frame(ws) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, list[str]]:
    """For a Workspace: (feature tables, model frame of every resolved person, model feature columns)."""
    tables = read_tables(ws.features)
    from personaops.consent import exclude_without_analytics

    # persons without analytics consent are neither trained on nor scored (docs/governance.md)
    record_person = exclude_without_analytics(ws, pd.read_parquet(ws.identity / "record_person.parquet", columns=["person_id"]))
    persons = pd.Index(sorted(record_person["person_id"].unique()), name="person_id")
    frame, columns = model_frame(tables, persons)
    return tables, frame, columns
