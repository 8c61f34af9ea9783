"""The probabilistic identity pass: a Splink (Fellegi-Sunter) model on embedded DuckDB.

It scores pairs of *entities* — one row per cluster the deterministic rules built, carrying that
cluster's representative attribute values — so a 385,000-record run sends only a few thousand
rows to Splink. u probabilities come from random sampling, m probabilities from expectation
maximisation; every comparison starts from prior m values so a comparison EM cannot train still
scores sensibly. Splink is imported inside the functions: importing this module does no work.

The same model runs on Spark (`identity.backend: spark`, Splink's `SparkAPI`) for the scale path:
the comparisons use only functions both backends have, and what needs backend-specific SQL
(the e-mail's local part, domain and digits) is derived in pandas before the data goes in.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Attribute columns the model compares when a run has them (canonical identifiers, plus the
# person attributes a source may carry, e.g. FEBRL's names, date of birth and address).
STRING_ATTRIBUTES = ["name", "first_name", "last_name", "address", "city"]
EXACT_ATTRIBUTES = ["device_id"]
MATCH_ATTRIBUTES = ["name", "first_name", "last_name", "email", "phone", "device_id", "date_of_birth", "postcode", "address", "city", "national_id"]
# Parts of the e-mail the comparisons and blocking rules use, derived before Splink sees the data.
EMAIL_PARTS = ["email_user", "email_domain", "email_digits", "email_head", "email_tail"]
BACKENDS = ("duckdb", "spark")


@dataclass
class ProbabilisticMatches:
    pairs: pd.DataFrame  # entity_l, entity_r, match_probability, match_weight, agreed
    trained: bool  # False when the data was too small to train and no pass ran
    entities: int
    em_sessions: int
    model: dict | None = None  # the trained Splink model (JSON settings), kept for incremental runs


def _string_levels(col: str):
    """Exact, one typo (Damerau-Levenshtein), then Jaro-Winkler bands, with prior m values."""
    import splink.comparison_level_library as cll

    return [
        cll.NullLevel(col),
        cll.ExactMatchLevel(col).configure(m_probability=0.80),
        # One edit means little between short values ("5" and "9"): only from 4 characters on.
        cll.And(cll.DamerauLevenshteinLevel(col, 1), cll.CustomLevel(f"length({col}_l) >= 4")).configure(
            m_probability=0.10, label_for_charts="one edit (4+ characters)"
        ),
        cll.JaroWinklerLevel(col, 0.92).configure(m_probability=0.05),
        cll.JaroWinklerLevel(col, 0.80).configure(m_probability=0.03),
        cll.ElseLevel().configure(m_probability=0.02),
    ]


def _comparisons(columns: list[str]):
    import splink.comparison_level_library as cll
    import splink.comparison_library as cl

    comparisons = []
    for col in columns:
        if col in STRING_ATTRIBUTES:
            comparisons.append(cl.CustomComparison(_string_levels(col), output_column_name=col))
        elif col == "email":
            # Fuzzy e-mail levels need the same digits: ana.smith12 and ana.smith15 are two people.
            same_digits = cll.ExactMatchLevel("email_digits")
            levels = [
                cll.NullLevel("email"),
                cll.ExactMatchLevel("email").configure(m_probability=0.85),
                cll.And(cll.DamerauLevenshteinLevel("email_user", 1), cll.ExactMatchLevel("email_domain"), same_digits).configure(
                    m_probability=0.05, label_for_charts="one typo in the local part, same domain and digits"
                ),
                cll.ExactMatchLevel("email_user").configure(m_probability=0.04, label_for_charts="same local part, other domain"),
                cll.And(cll.JaroWinklerLevel("email_user", 0.88), same_digits).configure(
                    m_probability=0.03, label_for_charts="Jaro-Winkler >= 0.88 on local part, same digits"
                ),
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
    # Column by column (vectorised): "a" + "," + "b", skipping missing parts.
    out = pd.Series("", index=scored.index, dtype="string")
    for part in parts:
        part = part.fillna("")
        sep = (out != "") & (part != "")
        out = out + sep.map({True: ",", False: ""}).astype("string") + part
    return out.astype(object)


# Columns that narrow a blocking rule which would compare too many pairs, tried in this order (each
# added to the rule until it is within budget). A name is shared by many people: on generated data
# (520 distinct names) the name rule compares 9.6M pairs at 100,000 people and 962M at 1,000,000.
REFINERS = ["email_domain", "postcode", "date_of_birth", "city", "email_digits", "phone"]


def _key(table: pd.DataFrame, expression: str) -> pd.Series:
    """A blocking key expression (a column, or substr(column, start[, length]) as Splink writes it)
    evaluated on the table, the way DuckDB and Spark SQL do (1-based start; a negative one counts
    from the end)."""
    if not expression.startswith("substr("):
        return table[expression]
    column, *args = [x.strip() for x in expression[len("substr(") : -1].split(",")]
    start = int(args[0])
    begin = start - 1 if start > 0 else start
    end = None if len(args) == 1 else (begin + int(args[1]) if begin + int(args[1]) != 0 else None)
    return table[column].str.slice(begin, end)


def block_pairs(table: pd.DataFrame, expressions: list[str]) -> int:
    """Pairs a dedupe blocking rule on these key expressions compares: rows agreeing on every key,
    none missing (Splink's equi-join)."""
    group = np.zeros(len(table), dtype=np.int64)
    for expression in expressions:  # one integer group per distinct combination of keys; -1: a key is missing
        codes, uniques = pd.factorize(_key(table, expression))
        missing = (codes < 0) | (group < 0)
        group = np.where(missing, -1, pd.factorize(group * (len(uniques) + 1) + codes)[0])
    counts = np.bincount(group[group >= 0]).astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def _blocking_rules(columns: list[str], table: pd.DataFrame | None = None, max_pairs: int | None = None) -> tuple[list, list[dict]]:
    """(Splink blocking rules, what was decided for each). A rule that would compare more than
    `max_pairs` pairs of `table` is narrowed by REFINERS columns, one more at a time, until it is
    within budget, or dropped when none bring it there: so the pairs scored grow with the entities,
    not with their square."""
    from splink import block_on

    specs = [[c] for c in ("email", "phone", "national_id", "device_id", "date_of_birth", "postcode") if c in columns]
    if "name" in columns:
        specs.append(["name"])
        specs.append(["substr(name, 1, 3)", "substr(name, -3)"])
    if "first_name" in columns and "last_name" in columns:
        specs.append(["first_name", "last_name"])
        specs.append(["substr(first_name, 1, 2)", "substr(last_name, 1, 2)"])
    if "email" in columns:
        # A typo'd address still shares a prefix or a suffix of its local part. The prefix is
        # usually the first name, so it blocks together with the local part's digits (which the
        # fuzzy e-mail levels require to agree anyway): 11.5M -> far fewer pairs on 31k people.
        specs.append(["email_head", "email_digits"])
        specs.append(["email_tail"])
    rules, decisions = [], []
    for spec in specs:
        if table is None or max_pairs is None:
            rules.append(block_on(*spec))
            continue
        pairs = block_pairs(table, spec)
        decision = {"rule": " & ".join(spec), "pairs": pairs, "budget": int(max_pairs)}
        narrowed = list(spec)
        for column in (c for c in REFINERS if c in table.columns and c not in spec):
            if pairs <= max_pairs:
                break
            narrowed.append(column)
            pairs = block_pairs(table, narrowed)
        if pairs > max_pairs:
            decision["action"] = "dropped"
        elif narrowed == spec:
            decision["action"] = "kept"
            rules.append(block_on(*spec))
        else:
            decision.update(action="narrowed", to=" & ".join(narrowed), pairs_after=pairs)
            rules.append(block_on(*narrowed))
        decisions.append(decision)
    return rules, decisions


def _training_rules(table: pd.DataFrame, columns: list[str], min_pairs: int = 50):
    """EM blocking rules: two strong identifiers (each session trains every comparison but its
    own, so together they train all), or one strong identifier and names when there is only one
    — each rule only when it yields enough pairs (a failed EM session leaves Splink's model
    without the comparisons it blocked on).

    Names only when needed: a name blocks 20-30 times more pairs than a date of birth (153k vs
    5k on FEBRL4), and computing their comparison vectors was most of the EM time; FEBRL F1 is
    the same without that session (0.9998 / 0.9970 FEBRL4, 0.9997 / 0.9967 FEBRL3).
    """
    from splink import block_on

    def pairs(col: str) -> int:
        counts = table[col].value_counts()
        return int((counts * (counts - 1) // 2).sum())

    strong = [c for c in ("date_of_birth", "email", "phone", "national_id", "postcode") if c in columns and pairs(c) >= min_pairs]
    names = [c for c in ("name", "last_name", "first_name") if c in columns and pairs(c) >= min_pairs]
    return [block_on(c) for c in (strong[:2] if len(strong) >= 2 else strong[:1] + names[:1])]


def _clamp(model: dict, sampled_pairs: float, floor: float = 1e-4) -> dict:
    """Keep every trained m inside (floor, 1 - floor) and every u inside (1 / sampled_pairs,
    1 - floor): EM can drive a level to exactly 0, which would veto any pair on one comparison
    however strong the rest of the evidence.

    A level that no sampled pair reached (one typo in an e-mail with the same digits and domain)
    gets u = 1 / sampled_pairs, the smallest frequency the sample could have shown. Left unset,
    Splink falls back to a generic default u (at most 3 bits for a non-exact level), which made
    a near-unique fuzzy e-mail count as weak evidence, and its floor at 1e-4 capped it at ~10 bits.
    """
    u_floor = 1.0 / max(float(sampled_pairs), 1.0)
    for comparison in model["comparisons"]:
        for level in comparison["comparison_levels"]:
            if level.get("is_null_level"):
                continue
            if isinstance(level.get("m_probability"), (int, float)):
                level["m_probability"] = min(max(float(level["m_probability"]), floor), 1 - floor)
            u = level.get("u_probability")
            level["u_probability"] = min(max(float(u), u_floor), 1 - floor) if isinstance(u, (int, float)) else u_floor
    return model


def email_parts(email: pd.Series) -> pd.DataFrame:
    """EMAIL_PARTS of normalised addresses: local part, domain, the local part's digits ('' when
    it has none), the address's first 5 characters, the local part's last 5 (missing if shorter)."""
    email = email.astype("string")
    user = email.str.extract(r"^([^@]+)", expand=False)
    return pd.DataFrame(
        {
            "email_user": user,
            "email_domain": email.str.extract(r"@([^@]+)$", expand=False),
            "email_digits": user.str.replace(r"[^0-9]", "", regex=True),
            "email_head": email.str[:5],
            "email_tail": user.str[-5:].where(user.str.len() >= 5),
        },
        index=email.index,
    ).astype("string")


def spark_session(master: str = "local[*]", driver_memory: str = "1g", shuffle_partitions: int = 4):
    """The process's Spark session for the scale path, created on first use and then reused.

    Lean for local mode: Splink's similarity-function jar, no web UI, small shuffles, the driver
    bound to the loopback address. Raises ConfigError in one sentence when Java is missing.
    """
    from pyspark.sql import SparkSession
    from splink.backends.spark import similarity_jar_location

    from personaops.errors import ConfigError

    # Python workers (the Spark engine's mapInPandas tasks) run this interpreter, the venv's, not
    # whatever `python3` is on PATH: fixed when the process's one session starts, whoever starts it.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(master)
        .appName("personaops-identity")
        .config("spark.jars", similarity_jar_location())
        .config("spark.driver.memory", driver_memory)
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.default.parallelism", str(shuffle_partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    if master.startswith("local"):
        # Local mode talks to nobody: driver and block manager on loopback only.
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # noqa: BLE001 - pyspark raises a bare RuntimeError/PySparkRuntimeError when the JVM cannot start
        raise ConfigError(
            f"identity.backend is 'spark' but Spark could not start at {master!r} ({str(exc).splitlines()[0][:160]}); "
            "install Java 17 (infra/ensure-java.sh) or set identity.backend: duckdb."
        ) from None
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# DuckDB's own memory for the full pass (blocked pairs, comparison vectors, EM): past it DuckDB spills
# to a temporary directory. Its default, 80% of the machine's memory, let the pass grow with the
# pairs the rules compare: 1.2 -> 2.1 GiB at 100,000 people, 2.4 -> 6.5 GiB at 300,000 (session 9).
# At 100,000 people a 600 MB limit gave the same pairs and model (peak 1,206 -> 919 MiB, same CPU).
DUCKDB_MEMORY_LIMIT = "2GB"


def _duckdb_api():
    """Splink's DuckDBAPI on its own in-memory connection with DUCKDB_MEMORY_LIMIT and a spill
    directory of its own, removed with the API object."""
    import shutil
    import tempfile
    import weakref

    import duckdb
    from splink import DuckDBAPI

    spill = tempfile.mkdtemp(prefix="personaops-duckdb-")
    api = DuckDBAPI(connection=duckdb.connect(config={"memory_limit": DUCKDB_MEMORY_LIMIT, "temp_directory": spill}))
    weakref.finalize(api, shutil.rmtree, spill, True)
    return api


def database_api(backend: str = "duckdb", spark_master: str = "local[*]", spark_driver_memory: str = "1g", spark_shuffle_partitions: int = 4):
    """A fresh Splink database API for `backend` (duckdb = embedded, spark = SparkAPI)."""
    if backend == "duckdb":
        return _duckdb_api()
    if backend != "spark":
        from personaops.errors import ConfigError

        raise ConfigError(f"identity.backend {backend!r} is not one of {', '.join(BACKENDS)}; fix personas.yaml.")
    from splink.backends.spark import SparkAPI

    spark = spark_session(spark_master, spark_driver_memory, spark_shuffle_partitions)
    # Persist (memory) instead of Splink's default parquet checkpoints: no checkpoint folder to
    # manage, and at the sizes one driver handles the intermediate tables fit in memory.
    return SparkAPI(spark_session=spark, break_lineage_method="persist", num_partitions_on_repartition=spark_shuffle_partitions)


def score_entities(
    entities: pd.DataFrame,
    training: pd.DataFrame,
    min_entities: int,
    seed: int,
    max_pairs_u: float,
    min_probability: float,
    backend: str = "duckdb",
    spark_master: str = "local[*]",
    spark_driver_memory: str = "1g",
    spark_shuffle_partitions: int = 4,
    em_max_iterations: int = 25,
    max_block_pairs_per_entity: float | None = None,
) -> ProbabilisticMatches:
    """Score candidate pairs of `entities` (columns entity + any MATCH_ATTRIBUTES) and return
    those with match_probability >= min_probability (0-1).

    The model is trained on `training` (distinct record-level attribute rows, at most
    `identity.max_training_rows`, where the links the rules already made give EM real matches to
    learn from), never on the entities; it then scores the entities with the
    prior that a random pair of entities matches at 1 / number of entities. `backend` picks the
    engine Splink runs on (duckdb, or spark with the given master, driver memory and shuffle
    partitions); the model and its settings are the same on both. A blocking rule that would compare
    more than `max_block_pairs_per_entity` x entities pairs is narrowed (`_blocking_rules`).
    """
    empty = pd.DataFrame(columns=["entity_l", "entity_r", "match_probability", "match_weight", "agreed"])
    columns = [c for c in MATCH_ATTRIBUTES if c in entities.columns and entities[c].notna().any()]
    if len(entities) < max(min_entities, 2) or not columns:
        return ProbabilisticMatches(empty, False, len(entities), 0)

    from splink import Linker, SettingsCreator

    logging.getLogger("splink").setLevel(logging.ERROR)

    def as_table(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame[["entity", *columns]].rename(columns={"entity": "unique_id"}).copy()
        for col in columns:
            out[col] = out[col].astype("string")
        if "email" in columns:
            out = out.join(email_parts(out["email"]))
        return out

    entities_table = as_table(entities)
    budget = None if max_block_pairs_per_entity is None else int(max_block_pairs_per_entity * len(entities))
    blocking_rules, blocking = _blocking_rules(columns, entities_table, budget)
    for decision in blocking:
        if decision["action"] != "kept":
            logging.getLogger(__name__).warning(
                "blocking rule %s would compare %s pairs of %s entities (budget %s): %s", decision["rule"], f"{decision['pairs']:,}",
                f"{len(entities):,}", f"{decision['budget']:,}",
                f"narrowed to {decision['to']} ({decision['pairs_after']:,} pairs)" if decision["action"] == "narrowed" else "dropped",
            )  # fmt: skip
    settings = SettingsCreator(
        link_type="dedupe_only",
        comparisons=_comparisons(columns),
        blocking_rules_to_generate_predictions=blocking_rules,
        probability_two_random_records_match=1.0 / len(entities),
        retain_intermediate_calculation_columns=True,
        retain_matching_columns=True,
        max_iterations=em_max_iterations,
    )
    db = database_api(backend, spark_master, spark_driver_memory, spark_shuffle_partitions)
    # EM and u sampling run on the sampled record rows, whatever the number of entities: the rule
    # pass merged the records sharing an identifier, so among the entities a strong identifier
    # blocks almost no pair (0 e-mail and 12 phone pairs of 360k entities at 300,000 generated
    # people) and the one session left blocked on the name: 94M pairs there, 1.05 billion at
    # 1,000,000, which ran more than 27 minutes (session 9). The record rows keep the rules' links
    # (107k e-mail pairs in the 200k sample at 100,000 people), and their EM stays this size.
    train_table = as_table(training)
    train_input = db.register(train_table, table_name="identity_training")
    trainer = Linker(train_input, settings, log_level=None)
    # One pass over the sampled pairs per comparison: Splink 5's default probes in 10 chunks and
    # keeps going until every level has 100 non-matches, which rare levels (one typo in an id)
    # never reach, so it ran every chunk. With 250k pairs (the default) that is 3-4x less u time
    # than the chunked default at 1M pairs, at the same F1 on FEBRL3 and FEBRL4. (Scoring the
    # sample's cartesian product once for all comparisons instead was slower: 4.1 vs 3.1 CPU s.)
    trainer.training.estimate_u_using_random_sampling(max_pairs=max_pairs_u, seed=seed, min_count_per_level=None, num_chunks=1)
    # EM must start from the filled-in u: with Splink's default u a rare fuzzy level looks weak,
    # its pairs fall out of EM's match class and its m collapses towards 0 (0.0002 for one typo in
    # the e-mail on 10,000 generated people, where about 9% of the matching pairs it sees have one).
    trained_u = _clamp(trainer.misc.save_model_to_json(), max_pairs_u)
    trained_u["linker_uid"] = None
    trainer = Linker(train_input, trained_u, log_level=None)
    sessions = 0
    for rule in _training_rules(train_table, columns):
        try:
            trainer.training.estimate_parameters_using_expectation_maximisation(
                rule, estimate_without_term_frequencies=True, fix_probability_two_random_records_match=True
            )
            sessions += 1
        except Exception as exc:  # noqa: BLE001 - EM found nothing to learn under this rule: keep prior m values
            logging.getLogger(__name__).info("EM on %s skipped: %s", rule, exc)
    model = _clamp(trainer.misc.save_model_to_json(), max_pairs_u)
    model["probability_two_random_records_match"] = 1.0 / len(entities)
    model["linker_uid"] = None
    linker = Linker(db.register(entities_table, table_name="identity_entities"), model, log_level=None)
    scored = linker.inference.predict(threshold_match_probability=min_probability, warning_mode="never").as_pandas_dataframe()
    if backend == "spark":
        db.spark.catalog.clearCache()  # the persisted intermediate tables of this run
    if scored.empty:
        return ProbabilisticMatches(empty, True, len(entities), sessions, model)
    return ProbabilisticMatches(_pairs(scored, model), True, len(entities), sessions, model)


def _pairs(scored: pd.DataFrame, model: dict) -> pd.DataFrame:
    gammas = [c for c in scored.columns if c.startswith("gamma_")]
    agreed = _agreement(scored, gammas, {c["output_column_name"]: len(c["comparison_levels"]) for c in model["comparisons"]})
    return pd.DataFrame(
        {
            "entity_l": scored["unique_id_l"].astype("int64"),
            "entity_r": scored["unique_id_r"].astype("int64"),
            "match_probability": scored["match_probability"].astype(float),
            "match_weight": scored["match_weight"].astype(float),
            "agreed": agreed,
        }
    )


def model_columns(model: dict) -> list[str]:
    """The attribute columns a saved model compares (its comparisons' output columns)."""
    return [c["output_column_name"] for c in model["comparisons"]]


def link_new_entities(new: pd.DataFrame, existing: pd.DataFrame, model: dict, min_probability: float, total_entities: int) -> pd.DataFrame:
    """Score the `new` entities against each other and against the `existing` ones with a model
    `score_entities` trained earlier (no u sampling, no EM): an incremental run's Splink pass.

    One link-only prediction of `new` against `new` + `existing` (the same blocking rules and
    comparisons as the full pass); self pairs and the mirrored copy of each new-new pair are
    dropped. The prior is 1 / `total_entities`, as a full pass over all entities would use.
    Returns entity_l (always a new entity), entity_r, match_probability, match_weight, agreed.
    """
    empty = pd.DataFrame(columns=["entity_l", "entity_r", "match_probability", "match_weight", "agreed"])
    if new.empty:
        return empty
    from splink import DuckDBAPI, Linker

    logging.getLogger("splink").setLevel(logging.ERROR)
    columns = model_columns(model)

    def as_table(frame: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame({"unique_id": frame["entity"].astype("int64").to_numpy()})
        for col in columns:
            out[col] = (frame[col] if col in frame.columns else pd.Series(pd.NA, index=frame.index)).astype("string").to_numpy()
        if "email" in columns:
            out = out.join(email_parts(out["email"]))
        return out

    settings = dict(model, link_type="link_only", probability_two_random_records_match=1.0 / max(total_entities, 2), linker_uid=None)
    db = DuckDBAPI()
    left = db.register(as_table(new), table_name="identity_new")
    right = db.register(as_table(pd.concat([new, existing], ignore_index=True)), table_name="identity_all")
    linker = Linker([left, right], settings, log_level=None)
    scored = linker.inference.predict(threshold_match_probability=min_probability, warning_mode="never").as_pandas_dataframe()
    if scored.empty:
        return empty
    # which side is the new table: Splink orders the two inputs by their names
    if "source_dataset_l" in scored.columns and (scored["source_dataset_l"].astype(str) != "identity_new").all():
        swap = {c: c[:-2] + "_r" for c in scored.columns if c.endswith("_l")} | {c: c[:-2] + "_l" for c in scored.columns if c.endswith("_r")}
        scored = scored.rename(columns=swap)
    pairs = _pairs(scored, model)
    new_ids = set(new["entity"].astype("int64"))
    both_new = pairs["entity_r"].isin(new_ids)
    keep = (pairs["entity_l"] != pairs["entity_r"]) & (~both_new | (pairs["entity_l"] < pairs["entity_r"]))
    return pairs[keep].reset_index(drop=True)
