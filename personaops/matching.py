"""The probabilistic identity pass: a Splink (Fellegi-Sunter) model on embedded DuckDB.

It scores pairs of *entities* — one row per cluster the deterministic rules built, carrying that
cluster's representative attribute values — so a 385,000-record run sends only a few thousand
rows to Splink. u probabilities come from random sampling, m probabilities from expectation
maximisation; every comparison starts from prior m values so a comparison EM cannot train still
scores sensibly. Splink is imported inside the functions: importing this module does no work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

# Attribute columns the model compares when a run has them (canonical identifiers, plus the
# person attributes a source may carry, e.g. FEBRL's names, date of birth and address).
STRING_ATTRIBUTES = ["name", "first_name", "last_name", "address", "city"]
EXACT_ATTRIBUTES = ["device_id"]
MATCH_ATTRIBUTES = ["name", "first_name", "last_name", "email", "phone", "device_id", "date_of_birth", "postcode", "address", "city", "national_id"]


@dataclass
class ProbabilisticMatches:
    pairs: pd.DataFrame  # entity_l, entity_r, match_probability, match_weight, agreed
    trained: bool  # False when the data was too small to train and no pass ran
    entities: int
    em_sessions: int


def _string_levels(col: str):
    """Exact, one typo (Damerau-Levenshtein), then Jaro-Winkler bands, with prior m values."""
    import splink.comparison_level_library as cll

    return [
        cll.NullLevel(col),
        cll.ExactMatchLevel(col).configure(m_probability=0.80),
        cll.DamerauLevenshteinLevel(col, 1).configure(m_probability=0.10),
        cll.JaroWinklerLevel(col, 0.92).configure(m_probability=0.05),
        cll.JaroWinklerLevel(col, 0.80).configure(m_probability=0.03),
        cll.ElseLevel().configure(m_probability=0.02),
    ]


def _comparisons(columns: list[str]):
    import splink.comparison_level_library as cll
    import splink.comparison_library as cl
    from splink import ColumnExpression

    comparisons = []
    for col in columns:
        if col in STRING_ATTRIBUTES:
            comparisons.append(cl.CustomComparison(_string_levels(col), output_column_name=col))
        elif col == "email":
            user = ColumnExpression("email").regex_extract("^[^@]+")
            # Fuzzy e-mail levels need the same digits: ana.smith12 and ana.smith15 are two people.
            digits = "regexp_replace(regexp_extract(email_{s}, '^[^@]+'), '[^0-9]', '', 'g')"
            same_digits = f"{digits.format(s='l')} = {digits.format(s='r')}"
            user_sql = "regexp_extract(email_{s}, '^[^@]+')"
            domain_sql = "regexp_extract(email_{s}, '@([^@]+)$', 1)"
            levels = [
                cll.NullLevel("email"),
                cll.ExactMatchLevel("email").configure(m_probability=0.85),
                cll.CustomLevel(
                    f"damerau_levenshtein({user_sql.format(s='l')}, {user_sql.format(s='r')}) <= 1 "
                    f"AND {domain_sql.format(s='l')} = {domain_sql.format(s='r')} AND {same_digits}",
                    label_for_charts="one typo in the local part, same domain and digits",
                ).configure(m_probability=0.05),
                cll.ExactMatchLevel(user).configure(m_probability=0.04, label_for_charts="same local part, other domain"),
                cll.CustomLevel(
                    f"jaro_winkler_similarity({user_sql.format(s='l')}, {user_sql.format(s='r')}) >= 0.88 AND {same_digits}",
                    label_for_charts="Jaro-Winkler >= 0.88 on local part, same digits",
                ).configure(m_probability=0.03),
                cll.ElseLevel().configure(m_probability=0.03),
            ]
            comparisons.append(cl.CustomComparison(levels, output_column_name="email"))
        elif col in ("phone", "date_of_birth", "postcode", "national_id"):
            levels = [
                cll.NullLevel(col),
                cll.ExactMatchLevel(col).configure(m_probability=0.85),
                cll.DamerauLevenshteinLevel(col, 1).configure(m_probability=0.10),
                cll.ElseLevel().configure(m_probability=0.05),
            ]
            comparisons.append(cl.CustomComparison(levels, output_column_name=col))
        elif col in EXACT_ATTRIBUTES:
            levels = [cll.NullLevel(col), cll.ExactMatchLevel(col).configure(m_probability=0.7), cll.ElseLevel().configure(m_probability=0.3)]
            comparisons.append(cl.CustomComparison(levels, output_column_name=col))
    return comparisons


def _agreement(scored: pd.DataFrame, gammas: list[str], levels: dict[str, int]) -> pd.Series:
    """'name:exact,email:fuzzy' per pair: the comparisons that agreed exactly (top level) or fuzzily."""
    parts = []
    for g in gammas:
        col = g[len("gamma_") :]
        top = levels.get(col, 0) - 2  # levels: null (-1), ..., else (0); the exact level is the highest
        level = scored[g]
        parts.append(pd.Series(pd.NA, index=scored.index, dtype="string").mask(level >= 1, col + ":fuzzy").mask(level == top, col + ":exact"))
    if not parts:
        return pd.Series("", index=scored.index)
    joined = pd.concat(parts, axis=1)
    return joined.apply(lambda row: ",".join(v for v in row if isinstance(v, str)), axis=1)


def _blocking_rules(columns: list[str]):
    from splink import block_on

    rules = [block_on(c) for c in ("email", "phone", "national_id", "device_id", "date_of_birth", "postcode") if c in columns]
    if "name" in columns:
        rules.append(block_on("name"))
        rules.append(block_on("substr(name, 1, 3)", "substr(name, -3)"))
    if "first_name" in columns and "last_name" in columns:
        rules.append(block_on("first_name", "last_name"))
        rules.append(block_on("substr(first_name, 1, 2)", "substr(last_name, 1, 2)"))
    if "email" in columns:
        # A typo'd address still shares a prefix or a suffix of its local part. The prefix is
        # usually the first name, so it blocks together with the local part's digits (which the
        # fuzzy e-mail levels require to agree anyway): 11.5M -> far fewer pairs on 31k people.
        rules.append(block_on("substr(email, 1, 5)", "regexp_replace(regexp_extract(email, '^[^@]+'), '[^0-9]', '', 'g')"))
        rules.append(block_on("regexp_extract(email, '(.{5})@', 1)"))
    return rules


def _training_rules(table: pd.DataFrame, columns: list[str], min_pairs: int = 50):
    """EM blocking rules: one on a strong identifier (trains the names), one on names (trains the
    rest) — each only when it yields enough pairs (a failed EM session leaves Splink's model
    without the comparisons it blocked on)."""
    from splink import block_on

    def pairs(col: str) -> int:
        counts = table[col].value_counts()
        return int((counts * (counts - 1) // 2).sum())

    strong = [c for c in ("date_of_birth", "email", "phone", "national_id", "postcode") if c in columns and pairs(c) >= min_pairs]
    names = [c for c in ("name", "last_name", "first_name") if c in columns and pairs(c) >= min_pairs]
    rules = [block_on(c) for c in (strong[:1] + names[:1] + strong[1:2])]
    return rules


def _clamp(model: dict, floor: float = 1e-4) -> dict:
    """Keep every trained m and u inside (floor, 1 - floor): EM can drive a level to exactly 0,
    which would veto any pair on one comparison however strong the rest of the evidence."""
    for comparison in model["comparisons"]:
        for level in comparison["comparison_levels"]:
            for p in ("m_probability", "u_probability"):
                if isinstance(level.get(p), (int, float)):
                    level[p] = min(max(float(level[p]), floor), 1 - floor)
    return model


def score_entities(
    entities: pd.DataFrame,
    training: pd.DataFrame,
    min_entities: int,
    seed: int,
    max_pairs_u: float,
    min_probability: float,
) -> ProbabilisticMatches:
    """Score candidate pairs of `entities` (columns entity + any MATCH_ATTRIBUTES) and return
    those with match_probability >= min_probability (0-1).

    The model is trained on `training` (distinct record-level attribute rows, where the links the
    rules already made give EM real matches to learn from); it then scores the entities with the
    prior that a random pair of entities matches at 1 / number of entities.
    """
    empty = pd.DataFrame(columns=["entity_l", "entity_r", "match_probability", "match_weight", "agreed"])
    columns = [c for c in MATCH_ATTRIBUTES if c in entities.columns and entities[c].notna().any()]
    if len(entities) < max(min_entities, 2) or not columns:
        return ProbabilisticMatches(empty, False, len(entities), 0)

    from splink import DuckDBAPI, Linker, SettingsCreator

    logging.getLogger("splink").setLevel(logging.ERROR)

    def as_table(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame[["entity", *columns]].rename(columns={"entity": "unique_id"}).copy()
        for col in columns:
            out[col] = out[col].astype("string")
        return out

    settings = SettingsCreator(
        link_type="dedupe_only",
        comparisons=_comparisons(columns),
        blocking_rules_to_generate_predictions=_blocking_rules(columns),
        probability_two_random_records_match=1.0 / len(entities),
        retain_intermediate_calculation_columns=True,
        retain_matching_columns=True,
    )
    db = DuckDBAPI()
    train_table = as_table(training if len(training) >= len(entities) else entities)
    trainer = Linker(db.register(train_table, table_name="identity_training"), settings, log_level=None)
    trainer.training.estimate_u_using_random_sampling(max_pairs=max_pairs_u, seed=seed)
    sessions = 0
    for rule in _training_rules(train_table, columns):
        try:
            trainer.training.estimate_parameters_using_expectation_maximisation(
                rule, estimate_without_term_frequencies=True, fix_probability_two_random_records_match=True
            )
            sessions += 1
        except Exception as exc:  # noqa: BLE001 - EM found nothing to learn under this rule: keep prior m values
            logging.getLogger(__name__).info("EM on %s skipped: %s", rule, exc)
    model = _clamp(trainer.misc.save_model_to_json())
    model["probability_two_random_records_match"] = 1.0 / len(entities)
    model["linker_uid"] = None
    linker = Linker(db.register(as_table(entities), table_name="identity_entities"), model, log_level=None)
    scored = linker.inference.predict(threshold_match_probability=min_probability, warning_mode="never").as_pandas_dataframe()
    if scored.empty:
        return ProbabilisticMatches(empty, True, len(entities), sessions)
    gammas = [c for c in scored.columns if c.startswith("gamma_")]
    agreed = _agreement(scored, gammas, {c["output_column_name"]: len(c["comparison_levels"]) for c in model["comparisons"]})
    pairs = pd.DataFrame(
        {
            "entity_l": scored["unique_id_l"].astype("int64"),
            "entity_r": scored["unique_id_r"].astype("int64"),
            "match_probability": scored["match_probability"].astype(float),
            "match_weight": scored["match_weight"].astype(float),
            "agreed": agreed,
        }
    )
    return ProbabilisticMatches(pairs, True, len(entities), sessions)
