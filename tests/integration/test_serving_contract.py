"""The serving contract (docs/serving.md): feature services persona_v1 and persona_v2 read with
nothing but the Feast SDK or Feast's own feature server, and no online view left unwritten."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from personaops.config import load_config
from personaops.workspace import Workspace
from tests.helpers import free_port, wait_healthy

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _pushed(home) -> set[str]:
    """Persons whose online rows a push test changed (they differ from the batch tables)."""
    path = Path(home) / "events" / "pushed.jsonl"
    return {json.loads(line)["person_id"] for line in path.read_text().splitlines()} if path.exists() else set()


@pytest.fixture(scope="module")
def contract(pipeline):
    """(home, champion version, published assignments of that version, its profiles by persona_id)."""
    from models import registry
    from models.train import load_profiles

    home, _ = pipeline
    cfg = load_config(environ={})
    cfg.home = Path(home)
    ws = Workspace(home)
    version = registry.alias_version(ws, cfg.model.registered_name, registry.CHAMPION)
    published = pd.read_parquet(ws.feature_table("persona_assignment"))
    published = published[(published["model_version"] == version) & ~published["person_id"].isin(_pushed(home))]
    profiles = {p["persona_id"]: p for p in load_profiles(ws, registry.version_run_id(ws, cfg.model.registered_name, version))}
    return home, version, published.reset_index(drop=True), profiles


def _fresh_feast(home, code: str) -> dict:
    """Run `code` in a new Python process that imports only the Feast SDK; its last stdout line is JSON."""
    env = dict(os.environ, PERSONAS_HOME=str(home), FEAST_USAGE="False")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_persona_v2_in_a_fresh_process_has_the_assignment_and_its_persona_s_traits(contract):
    home, version, published, profiles = contract
    sample = published[published["persona_id"] >= 0].sample(20, random_state=3)
    served = _fresh_feast(
        home,
        "import json; from feast import FeatureStore\n"
        "store = FeatureStore(repo_path='feature_repo')\n"
        f"ids = {sample['person_id'].tolist()!r}\n"
        "out = store.get_online_features(features=store.get_feature_service('persona_v2'), entity_rows=[{'person_id': i} for i in ids]).to_dict()\n"
        "print(json.dumps(out))\n",
    )
    assert served["persona_id"] == sample["persona_id"].tolist()
    assert served["model_version"] == [version] * len(sample)
    assert served["profile_model_version"] == [version] * len(sample)
    for i, persona in enumerate(sample["persona_id"]):
        profile = profiles[persona]
        assert served["persona_description"][i] == profile["description"] and served["persona_description"][i]
        assert served["persona_size"][i] == profile["size"] > 0
        assert served["persona_top_traits"][i].split("; ")[0].endswith(profile["traits"][0]["label"])
        assert served["persona_churn_rate"][i] == pytest.approx(profile["kpis"]["churned_rate"]["value"])
        assert 0 <= served["persona_churn_rate"][i] <= 1


def test_every_view_marked_online_is_written_with_the_batch_values(contract):
    """No consumer reads nulls: each online view has values for persons it has rows for, equal to
    the offline table the batch wrote."""
    from personaops.feature_store import feature_store

    home, _, published, _ = contract
    cfg = load_config(environ={})
    cfg.home = Path(home)
    ws = Workspace(home)
    store = feature_store(ws, cfg)
    online_views = [v for v in store.list_feature_views() if v.online]
    assert {"persona_assignment", "persona_traits", "person_behaviour", "person_support", "person_survey"} <= {v.name for v in online_views}
    skip = _pushed(home)
    for view in online_views:
        table = pd.read_parquet(ws.feature_table(view.name))
        if "model_version" in table.columns:
            table = table[table["model_version"] == published["model_version"].iloc[0]]
        if "profile_model_version" in table.columns:
            table = table[table["profile_model_version"] == published["model_version"].iloc[0]]
        table = table[~table["person_id"].isin(skip)].drop_duplicates("person_id", keep="last")
        sample = table.sample(min(15, len(table)), random_state=5)
        names = [f.name for f in view.features]
        got = store.get_online_features(features=[f"{view.name}:{n}" for n in names], entity_rows=[{"person_id": p} for p in sample["person_id"]]).to_dict()
        for name in names:
            for want, have in zip(sample[name].tolist(), got[name]):
                if want is None or (isinstance(want, float) and math.isnan(want)) or want is pd.NA:  # missing in the batch
                    assert have is None or (isinstance(have, float) and math.isnan(have)), (view.name, name)
                else:
                    assert have is not None, f"{view.name}:{name} is null online for a person the batch wrote"
                    assert have == pytest.approx(want), (view.name, name)


def test_feast_serve_reads_a_persona_over_http(contract):
    """Feast's own feature server (`feast serve`) on the pipeline's repo serves persona_v2."""
    import httpx

    home, version, published, profiles = contract
    person = published[published["persona_id"] >= 0]["person_id"].iloc[-1]
    expected = published.set_index("person_id").loc[person]
    port = free_port()
    env = dict(os.environ, PERSONAS_HOME=str(home), FEAST_USAGE="False")
    feast = Path(sys.executable).with_name("feast")
    server = subprocess.Popen([str(feast), "-c", "feature_repo", "serve", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", server, 120, 2, "feast serve", lambda: server.stderr.read() if server.poll() is not None else "")
        got = httpx.post(
            f"http://127.0.0.1:{port}/get-online-features",
            json={"feature_service": "persona_v2", "entities": {"person_id": [person, "nobody-0000"]}},
            timeout=30,
        )
        assert got.status_code == 200, got.text
        body = got.json()
        values = {name: result["values"] for name, result in zip(body["metadata"]["feature_names"], body["results"])}
        assert values["person_id"] == [person, "nobody-0000"]
        assert values["persona_id"][0] == expected["persona_id"]
        assert values["model_version"][0] == version
        assert values["persona_name"][0] == expected["persona_name"]
        assert values["persona_description"][0] == profiles[expected["persona_id"]]["description"]
        assert values["persona_id"][1] is None  # an unknown person is null, not an error
    finally:
        server.terminate()
        server.wait(timeout=30)
