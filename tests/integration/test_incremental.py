"""The incremental re-run: the same people (every source row byte-identical) plus new people.

One cold flow run and one re-run on +5% people in a fresh workspace (real Feast, MLflow, Splink,
the embedding model): the resolve links only the new records, earlier persons keep their ids,
no model version is trained when nothing fired, the champion scores and publishes the newcomers,
and the incremental identity map equals a full re-resolve of the same records.
"""

from __future__ import annotations

import pandas as pd
import pytest

USERS = 300


@pytest.fixture(scope="module")
def grown_runs(prefect_api, tmp_path_factory):
    from flows.build_personas import build_personas
    from personaops.generate import generate

    data = tmp_path_factory.mktemp("incremental-data")
    home = tmp_path_factory.mktemp("incremental-ws")
    generate(USERS, 5, data / "base")
    generate(USERS, 5, data / "grown", join_rate=0.05)
    first = build_personas(sources=str(data / "base" / "sources.yaml"), home=str(home))
    before = pd.read_parquet(home / "identity" / "record_person.parquet")
    second = build_personas(sources=str(data / "grown" / "sources.yaml"), home=str(home))
    after = pd.read_parquet(home / "identity" / "record_person.parquet")
    return home, first, second, before, after


def test_the_rerun_links_only_the_new_records_and_earlier_persons_keep_their_ids(grown_runs):
    _, first, second, before, after = grown_runs
    assert first["resolve"]["mode"] == "full" and second["resolve"]["mode"] == "incremental", second["resolve"]["full_reason"]
    new = after.merge(before[["source", "source_key"]], on=["source", "source_key"], how="left", indicator=True)
    new = new[new["_merge"] == "left_only"]
    assert second["resolve"]["new_records"] == len(new) > 0
    kept = before.merge(after, on=["source", "source_key"], suffixes=("_before", "_after"))
    assert len(kept) == len(before)
    assert (kept["person_id_before"] == kept["person_id_after"]).all()
    # the 15 joiners' CRM rows (customer ids after the base population's) are new persons
    joiners = new[(new["source"] == "crm")]
    assert len(joiners) == round(USERS * 0.05)
    assert not set(joiners["person_id"]) & set(before["person_id"])
    assert joiners["person_id"].nunique() == len(joiners)
    assert second["resolve"]["persons"] == after["person_id"].nunique() > first["resolve"]["persons"]


def test_no_new_model_version_when_nothing_fired_and_the_champion_serves_the_newcomers(grown_runs):
    from models import registry
    from personaops.config import load_config
    from personaops.workspace import Workspace

    home, first, second, before, after = grown_runs
    ws = Workspace(home)
    assert second["quality"]["action"] == "none"
    assert "skipped" in second["train"] and second["train"]["model_version"] == first["train"]["version"]
    monitor_retrained = "retrain" in second["monitor"]["outcome"]  # the policy may still call for a retrain after publishing
    versions = [v.version for v in registry.versions(ws, load_config().model.registered_name)]
    assert versions == [first["train"]["version"]] or (monitor_retrained and len(versions) == 2)
    assert second["publish"]["model_version"] == first["train"]["version"]
    published = pd.read_parquet(ws.feature_table("persona_assignment"))
    newcomers = set(after["person_id"]) - set(before["person_id"])
    mine = published[published["person_id"].isin(newcomers) & (published["model_version"] == first["train"]["version"])]
    assert set(mine["person_id"]) == newcomers


def test_the_rerun_keeps_the_intents_and_scores_with_the_kept_flag_models(grown_runs):
    """Newcomers who write what others wrote add no intent: the re-run keeps the mined intents
    (ids, labels), so the flag models trained on their mix are kept too (no retraining)."""
    _, first, second, _, _ = grown_runs
    assert first["intents"]["mode"] == "mined" and second["intents"]["mode"] == "kept", second["intents"].get("mined_reason")
    assert second["intents"]["kept_from_run"] == first["intents"]["run_id"]
    assert sorted(second["intents"]["labels"]) == sorted(first["intents"]["labels"])
    assert second["intents"]["texts"] > first["intents"]["texts"]
    assert second["flags"]["retrained"] is False, second["flags"].get("retrain_reason")


def test_the_incremental_map_equals_a_full_re_resolve(grown_runs):
    from flows.build_personas import _lake_frames
    from personaops import identity_store
    from personaops.config import load_config
    from personaops.identity import resolve_identities
    from personaops.workspace import Workspace

    home, _, second, before, after = grown_runs
    ws = Workspace(home)
    records = pd.concat(_lake_frames(ws, second["batches"]).values(), ignore_index=True)
    full = resolve_identities(records, load_config().identity, before, identity_store.decisions(ws))
    assert full.stats["merges"] == full.stats["splits"] == 0
    both = after.merge(full.records, on=["source", "source_key"], suffixes=("_inc", "_full"))
    assert len(both) == len(after) == len(full.records)
    assert (both["person_id_inc"] == both["person_id_full"]).all()
    assert (both["linked_by_inc"] == both["linked_by_full"]).all()
    assert len(pd.read_parquet(home / "identity" / "edges.parquet")) == len(full.edges)


def test_the_rerun_flags_equal_a_flags_pass_from_scratch_on_the_same_data(grown_runs, tmp_path):
    """The re-run's flags stage (kept risk/opportunity models, the last run's probabilities reused
    for unchanged input rows, online flag views written for the changed persons only) leaves what
    a flags pass without any state of the last pass leaves on the same data (no stage marker, no
    kept scores: every person scored; no online snapshot: both views rebuilt whole): the same
    amber_flags, persona summary, opportunity labels, Feast tables and online rows."""
    import os
    import shutil
    import sqlite3
    from pathlib import Path

    from personaops import insights
    from personaops.config import load_config
    from personaops.sources import load_sources
    from personaops.workspace import Workspace

    home, _, second, _, _ = grown_runs
    copy = tmp_path / "ws"
    shutil.copytree(home, copy, symlinks=True)
    for state in [*(copy / "lake" / "insights").glob("run_id=*/_flags.fingerprint"), *(copy / "lake" / "insights").glob(f"run_id=*/{insights.FLAG_SCORES}")]:
        state.unlink()
    shutil.rmtree(copy / "feast" / "personaops_published")
    env = dict(os.environ)  # the stage points Feast and MLflow at the copy
    try:
        cfg = load_config()
        cfg.home = copy
        kinds = {s.name: s.kind for s in load_sources(Path(second["sources"]))}
        scratch = insights.flags_stage(cfg, Workspace.from_config(cfg), "scratch", second["batches"], kinds, second["features"]["as_of"])
    finally:
        os.environ.clear()
        os.environ.update(env)
    # the models the re-run scored with (kept, or trained when e.g. the intents changed), kept by it
    assert scratch["retrained"] is False and scratch["mlflow_run_id"] == second["flags"]["mlflow_run_id"]
    assert {v["mode"] for v in scratch["online_publish"].values()} == {"full"}
    assert scratch["persons_scored"]["churn"] == scratch["persons_scored"]["persons"]  # no earlier scores: every person scored
    for key in ("risk_amber", "engagement_amber", "opportunity_amber", "online_rows", "run_id"):
        assert scratch[key] == second["flags"][key]
    run = f"run_id={second['flags']['run_id']}"
    for name in ("amber_flags", "persona_summary", "person_opportunity_labels"):
        pd.testing.assert_frame_equal(pd.read_parquet(copy / "lake" / "insights" / run / f"{name}.parquet"),
                                      pd.read_parquet(home / "lake" / "insights" / run / f"{name}.parquet"), check_exact=True)  # fmt: skip
    for view in ("person_flags", "person_opportunity"):
        pd.testing.assert_frame_equal(pd.read_parquet(copy / "features" / f"{view}.parquet"), pd.read_parquet(home / "features" / f"{view}.parquet"), check_exact=True)

    def online(ws: Path) -> dict:
        with sqlite3.connect(ws / "feast" / "online_store.db") as con:
            tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'") if t.endswith(("person_flags", "person_opportunity"))]
            return {t: sorted(con.execute(f'SELECT entity_key, feature_name, value, event_ts FROM "{t}"').fetchall()) for t in tables}

    rows = online(home)
    assert len(rows) == 2 and all(rows.values())
    assert online(copy) == rows
