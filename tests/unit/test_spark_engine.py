"""The Spark engine's pure parts (no JVM): configuration dispatch and the canonical schema."""

from __future__ import annotations

import pandas as pd
import pytest

from personaops import ingest, spark_engine
from personaops.config import IngestConfig, load_config
from personaops.errors import ConfigError
from personaops.sources import SourceSpec


def test_compute_engine_defaults_to_pandas_and_spark_moves_identity_onto_the_same_session():
    cfg = load_config(environ={})
    assert cfg.compute.engine == "pandas" and spark_engine.identity_config(cfg).backend == "duckdb"
    cfg = load_config(environ={"PERSONAS_COMPUTE__ENGINE": "spark", "PERSONAS_COMPUTE__SPARK_MASTER": "spark://h:7077", "PERSONAS_COMPUTE__SPARK_SHUFFLE_PARTITIONS": "16"})
    identity = spark_engine.identity_config(cfg)
    assert (identity.backend, identity.spark_master, identity.spark_shuffle_partitions) == ("spark", "spark://h:7077", 16)
    assert cfg.identity.backend == "duckdb"  # the loaded config itself is not changed


def test_unknown_engine_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="compute.engine"):
        load_config(environ={"PERSONAS_COMPUTE__ENGINE": "dask"})


def test_canonical_types_list_exactly_the_columns_ingest_produces_in_its_order(tmp_path):
    spec = SourceSpec.model_validate(
        {
            "name": "s", "kind": "surveys", "path": str(tmp_path / "s.csv"), "key": "id",
            "identifiers": {"email": "mail"}, "attributes": {"address": ["street", "city"]}, "timestamp": "ts", "text": ["answer"],
            "fields": {"score": "nps"}, "numeric": ["age"], "categorical": ["plan"], "labels": ["churned"], "sensitive": ["gender"],
        }
    )  # fmt: skip
    raw = pd.DataFrame({c: ["1"] for c in spec.mapped_columns()}, index=pd.Index([1], name="_row_number"), dtype=object)
    canon, _ = ingest._canonical(spec, raw, IngestConfig())
    types = spark_engine._canonical_types(spec)
    assert list(types) == list(canon.columns)
    assert types["event_time"] == "timestamp" and types["score"] == types["num__age"] == types["label__churned"] == "double"
    assert types["cat__plan"] == types["sensitive__gender"] == "string"
