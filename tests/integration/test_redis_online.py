"""The production profile's online path on a real Redis server (and the PostgreSQL SQL registry):
the fast publish writes Feast's own Redis layout, the stock Feast SDK in another process reads
it, a rollback re-publish switches each person atomically, and absent persons are removed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import pytest

from personaops.feature_store import ASSIGNMENT_FEATURES, ASSIGNMENT_VIEW, feast_yaml, feature_store, publish_assignments, read_persona
from personaops.online_publish import RedisPublisher, online_publisher
from tests.services import isolated_backends, service_environment, stop_services

from tests.helpers import assignment_rows, production_assignment_store

pytestmark = pytest.mark.integration
AT = pd.Timestamp("2026-03-01T12:00:00Z")


@pytest.fixture(scope="module")
def production_env():
    """PERSONAS_PROFILE=production with this module's own registry database and Redis db."""
    env, started = service_environment()
    try:
        with isolated_backends(env) as isolated, pytest.MonkeyPatch.context() as mp:
            for name, value in isolated.items():
                mp.setenv(name, value)
            mp.setenv("PERSONAS_PROFILE", "production")
            yield isolated
    finally:
        if started:
            stop_services()


def _assignments(ids: list[str], version: int, seed: int) -> pd.DataFrame:
    return assignment_rows(ids, version, seed, AT, AT + pd.Timedelta(minutes=version))


@pytest.fixture
def prod(production_env, tmp_path):
    """(cfg, ws, store): a workspace on the production profile with the assignment view applied."""
    return production_assignment_store(tmp_path / "ws", _assignments(["p0"], 1, 0))


def _online(store, ids: list[str]) -> pd.DataFrame:
    return store.get_online_features(features=[f"{ASSIGNMENT_VIEW}:{f}" for f in ASSIGNMENT_FEATURES], entity_rows=[{"person_id": i} for i in ids]).to_df()


def test_production_profile_selects_redis_and_the_sql_registry(prod):
    cfg, _, store = prod
    assert feast_yaml(cfg).name == "feature_store.production.yaml"
    assert store.config.online_store.type == "redis"
    assert store.config.registry.registry_type == "sql"
    assert ASSIGNMENT_VIEW in {v.name for v in store.list_feature_views()}
    assert isinstance(online_publisher(store), RedisPublisher)


def test_fast_redis_publish_writes_byte_for_byte_what_feast_writes(prod):
    _, _, store = prod
    rows = _assignments([f"layout-{i:04d}" for i in range(1_500)] + ["Zoë-ünïcode"], 3, 1)
    rows.loc[5, "confidence"] = np.nan
    rows.loc[6, "persona_name"] = None
    publisher = online_publisher(store)
    keys, _, _ = publisher.encode(store.get_feature_view(ASSIGNMENT_VIEW), rows)
    client = publisher.client()
    client.delete(*keys)
    store.write_to_online_store(ASSIGNMENT_VIEW, rows)
    by_feast = [client.hgetall(k) for k in keys]
    client.delete(*keys)
    assert publisher.replace(ASSIGNMENT_VIEW, rows) == len(rows)
    ours = [client.hgetall(k) for k in keys]
    assert len(by_feast[0]) == len(ASSIGNMENT_FEATURES) + 1  # the features and _ts:<view>
    assert ours == by_feast


def test_stock_feast_sdk_in_another_process_reads_the_published_personas(prod, production_env):
    cfg, ws, store = prod
    rows = _assignments([f"sdk-{i}" for i in range(400)], 2, 2)
    rows.loc[3, "confidence"] = np.nan
    publish_assignments(ws, cfg, rows.drop(columns=["model_version", "event_timestamp", "created"]), 2, AT)
    ids = rows["person_id"].tolist()[:50] + ["nobody"]
    reader = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from feast import FeatureStore\n"
        "repo = Path(sys.argv[1])\n"
        "store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / 'feature_store.production.yaml')\n"
        f"features = [f'{ASSIGNMENT_VIEW}:{{f}}' for f in {ASSIGNMENT_FEATURES!r}]\n"
        "rows = [{'person_id': p} for p in json.loads(sys.argv[2])]\n"
        "print(store.get_online_features(features=features, entity_rows=rows).to_df().to_json(orient='records'))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONAS_PROFILE")}
    env.update(PERSONAS_HOME=str(ws.root), FEAST_USAGE="False", **{k: production_env[k] for k in ("PERSONAS_FEAST_REGISTRY_URL", "PERSONAS_FEAST_REDIS")})
    done = subprocess.run([sys.executable, "-c", reader, str(cfg.feature_repo), json.dumps(ids)], capture_output=True, text=True, env=env, cwd=str(ws.root), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    served = pd.DataFrame(json.loads(done.stdout.strip().splitlines()[-1]))
    expected = rows.set_index("person_id").loc[ids[:-1]]
    assert served["persona_id"].iloc[:-1].tolist() == expected["persona_id"].tolist()
    assert served["persona_name"].iloc[:-1].tolist() == expected["persona_name"].tolist()
    assert served["model_version"].iloc[:-1].tolist() == [2] * 50
    assert np.allclose(served["confidence"].iloc[:-1].astype(float), expected["confidence"], equal_nan=True)
    assert served.iloc[-1][ASSIGNMENT_FEATURES].isna().all()


def test_rollback_republish_switches_each_person_atomically_and_drops_absent_persons(prod):
    cfg, ws, store = prod
    ids = [f"rb-{i:05d}" for i in range(3_000)]
    v1, v2 = _assignments(ids, 1, 11), _assignments(ids, 2, 12)
    publish_assignments(ws, cfg, v1.drop(columns=["model_version", "event_timestamp", "created"]), 1, AT)
    publish_assignments(ws, cfg, v2.drop(columns=["model_version", "event_timestamp", "created"]), 2, AT + pd.Timedelta(hours=1))
    assert set(read_persona(ws, cfg, ids[:100])["model_version"]) == {2}

    # Readers hammer a sample while the rollback re-publishes version 1 in small batches: every
    # person read must be exactly version 1's or version 2's row, never a mix of the two.
    sample = ids[::30]
    by_version = {1: v1.set_index("person_id"), 2: v2.set_index("person_id")}
    seen, mixed, errors = set(), [], []
    stop = threading.Event()

    def read_loop():
        reader = feature_store(ws, cfg)
        try:
            while not stop.is_set():
                for row in _online(reader, sample).itertuples(index=False):
                    version = by_version[int(row.model_version)].loc[row.person_id]
                    seen.add(int(row.model_version))
                    if row.persona_id != version["persona_id"] or row.persona_name != version["persona_name"] or not np.isclose(row.confidence, version["confidence"]):
                        mixed.append(row)
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=read_loop)
    thread.start()
    publisher = online_publisher(store)
    publisher.batch_persons = 50  # many small batches: the readers overlap the switch
    publisher.replace(ASSIGNMENT_VIEW, v1.assign(event_timestamp=AT + pd.Timedelta(hours=2)))
    stop.set()
    thread.join(timeout=120)
    assert not errors, errors[0]
    assert not mixed, f"{len(mixed)} reads mixed two versions, e.g. {mixed[0]}"
    assert seen, "the reader thread read nothing"
    after = _online(store, ids)
    assert after["model_version"].tolist() == [1] * len(ids)
    assert after["persona_id"].tolist() == v1["persona_id"].tolist()

    # A publish without some persons removes them from the view online (as the SQLite path does).
    publisher.replace(ASSIGNMENT_VIEW, v1.iloc[:2_000])
    gone = _online(store, ids[2_000:2_010])
    assert gone[ASSIGNMENT_FEATURES].isna().all().all()
    assert _online(store, ids[:3])["model_version"].tolist() == [1, 1, 1]


def test_the_api_s_direct_redis_reader_reads_what_the_feast_sdk_reads(prod):
    """personaops.serving.RedisOnlineReader (what `personas serve` reads on Redis): the same values
    as the stock Feast SDK for published persons, None for persons Redis has nothing for."""
    from personaops.serving import RedisOnlineReader

    _, _, store = prod
    ids = [f"reader-{i:03d}" for i in range(40)] + ["Zoë-ünïcode"]
    rows = _assignments(ids, 2, 4)
    rows.loc[3, "confidence"] = np.nan
    online_publisher(store).replace(ASSIGNMENT_VIEW, rows)
    assert RedisOnlineReader.supports(store)
    reader = RedisOnlineReader(store, ASSIGNMENT_VIEW)
    asked = ids + ["nobody-here"]
    ours = reader.read(asked)
    feast = _online(store, asked)
    assert ours[-1] is None and feast["model_version"].isna().iloc[-1]
    for i, person in enumerate(ids):
        for f in ASSIGNMENT_FEATURES:
            want = feast[f].iloc[i]
            got = ours[i][f]
            assert (pd.isna(want) and (got is None or got != got)) or got == want, (person, f, got, want)
    assert [r["model_version"] for r in reader.read([ids[5]])] == [2]  # one person: one HMGET
