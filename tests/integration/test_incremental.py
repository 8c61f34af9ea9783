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
