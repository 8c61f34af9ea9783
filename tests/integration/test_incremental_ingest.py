"""Incremental ingest and features on a grown export: the same lake and tables as a full run.

300 generated people, then the same sources plus 5% new people (every earlier row byte-identical),
through the flow's ingest, resolve and features stages (real Feast, the embedding model). The
re-run's ingest validates only the added rows, its features stage recomputes only the persons with
new records and skips `feast apply`; a full ingest and a full features pass over the same sources
give the same lake rows, quarantine, feature tables, texts and sensitive table.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

USERS = 300
TABLES = {
    **{view: f"features/{view}.parquet" for view in (
        "person_behaviour", "person_support", "person_survey", "person_campaign", "person_profile", "person_labels", "person_text_embedding")},
    "texts": "texts/person_texts.parquet",
    "sensitive": "audit/person_sensitive.parquet",
}  # fmt: skip


def _stages(home, sources, run_id, resolve_mode=None):
    import flows.build_personas as B

    ingested = B.ingest.fn(str(sources), str(home), run_id)
    resolved = B.resolve.fn(str(home), ingested["batches"], run_id)
    featured = B.features.fn(str(home), ingested["batches"], ingested["kinds"], resolved.get("mode") if resolve_mode is None else resolve_mode)
    return ingested, resolved, featured


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    import os

    from personaops.generate import generate

    os.environ["PERSONAS_INGEST__INCREMENTAL"] = "true"  # ingest.incremental (the default; set so a user's environment cannot turn it off)
    try:
        yield from _grown(tmp_path_factory, generate)
    finally:
        os.environ.pop("PERSONAS_INGEST__INCREMENTAL", None)


def _grown(tmp_path_factory, generate):

    data = tmp_path_factory.mktemp("inc-ingest-data")
    root = tmp_path_factory.mktemp("inc-ingest-ws")
    generate(USERS, 11, data / "base")
    generate(USERS, 11, data / "grown", join_rate=0.05)
    home = root / "ws"
    cold = _stages(home, data / "base" / "sources.yaml", "r1")
    again = _stages(home, data / "grown" / "sources.yaml", "r2")
    # the same grown sources from scratch (full ingest, full resolve, full features)
    fresh = _stages(root / "fresh", data / "grown" / "sources.yaml", "r3")
    # and a full features pass over the incremental run's own lake and identity map
    shutil.copytree(home, root / "full-features")
    full = _stages(root / "full-features", data / "grown" / "sources.yaml", "r4", resolve_mode="full")
    yield root, cold, again, fresh, full


def test_the_rerun_ingests_only_the_added_rows_into_the_same_lake(grown):
    from personaops.ingest import read_lake, read_quarantine
    from personaops.workspace import Workspace

    root, cold, again, fresh, _ = grown
    ingested = again[0]
    assert all(s["mode"] == "incremental" for s in ingested["sources"])
    for s, f in zip(ingested["sources"], fresh[0]["sources"]):
        assert (s["rows_in"], s["accepted"], s["quarantined"]) == (f["rows_in"], f["accepted"], f["quarantined"])
        [file] = s["files"]
        assert file["mode"] == "appended" and 0 < file["new_rows_in"] < file["rows_in"] / 10
        assert file["new_rows_in"] == file["new_accepted"] + file["new_quarantined"]
    drop = ["_batch_id", "_ingested_at", "_file"]
    for source, ids in ingested["batches"].items():
        assert len(ids) == 2  # the first ingest's batch and the added rows'
        mine = read_lake(Workspace(root / "ws"), source, ids).drop(columns=drop)
        theirs = read_lake(Workspace(root / "fresh"), source, fresh[0]["batches"][source]).drop(columns=drop)
        pd.testing.assert_frame_equal(mine, theirs, check_dtype=False)
        q_mine = read_quarantine(Workspace(root / "ws"), source, ids).drop(columns=drop, errors="ignore")
        q_theirs = read_quarantine(Workspace(root / "fresh"), source, fresh[0]["batches"][source]).drop(columns=drop, errors="ignore")
        pd.testing.assert_frame_equal(q_mine, q_theirs, check_dtype=False)


def test_incremental_features_equal_a_full_recompute_and_skip_feast_apply(grown):
    root, cold, again, _, full = grown
    resolved, featured = again[1], again[2]
    assert resolved["mode"] == "incremental" and featured["mode"] == "incremental", featured["full_reason"]
    # the earlier batches are the bytes the last resolve read: their records are not read again
    assert resolved["earlier_records"] == "unchanged batches, not re-read"
    key = ["source", "source_key"]
    mine = pd.read_parquet(root / "ws" / "identity" / "record_person.parquet").sort_values(key).reset_index(drop=True)
    theirs = pd.read_parquet(root / "fresh" / "identity" / "record_person.parquet").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(mine.drop(columns=["_batch_id"]), theirs.drop(columns=["_batch_id"]), obj="record_person")
    assert 0 < featured["changed_persons"] < resolved["persons"] / 5
    assert cold[2]["feast_apply"] == "applied" and featured["feast_apply"].startswith("skipped")
    assert featured["feature_views"] == cold[2]["feature_views"]
    assert full[2]["mode"] == "full"
    for name, rel in TABLES.items():
        mine, theirs = pd.read_parquet(root / "ws" / rel), pd.read_parquet(root / "full-features" / rel)
        if "text_embedding" in mine.columns:
            mine["text_embedding"] = [np.asarray(v).tobytes() for v in mine["text_embedding"]]
            theirs["text_embedding"] = [np.asarray(v).tobytes() for v in theirs["text_embedding"]]
        pd.testing.assert_frame_equal(mine, theirs, obj=name)
    assert featured["as_of"] == full[2]["as_of"]
