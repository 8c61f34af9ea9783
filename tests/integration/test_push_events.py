"""Living personas: events pushed for a person change their features and persona online at once
(POST /persons/{id}/events), written with the model version, visible to the stock Feast SDK."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from personaops.api import create_app
from personaops.config import load_config
from personaops.workspace import Workspace

pytestmark = pytest.mark.integration
TOKENS = "read-tok:reader,write-tok:writer,admin-tok:admin,analyst-tok:analyst"


def _cfg(home):
    cfg = load_config(environ={})
    cfg.home = Path(home)
    return cfg


@pytest.fixture(scope="module")
def living(pipeline):
    """(client, home, champion version, assignments of that version, behaviour table)."""
    from models import registry

    home, _ = pipeline
    cfg = _cfg(home)
    ws = Workspace(home)
    client = TestClient(create_app(cfg, environ={"PERSONAS_API_TOKENS": TOKENS}), raise_server_exceptions=False)
    version = registry.alias_version(ws, cfg.model.registered_name, registry.CHAMPION)
    published = pd.read_parquet(ws.feature_table("persona_assignment"))
    published = published[published["model_version"] == version].set_index("person_id")
    behaviour = pd.read_parquet(ws.feature_table("person_behaviour")).set_index("person_id")
    return client, home, version, published, behaviour


def _online(home, person: str) -> dict:
    from personaops.feature_store import feature_store

    store = feature_store(Workspace(home), _cfg(home))
    features = list(store.get_feature_service("persona_v2").feature_view_projections)
    refs = [f"{p.name}:{f.name}" for p in features for f in p.features] + ["person_behaviour:n_events", "person_behaviour:n_sessions"]
    return {k: v[0] for k, v in store.get_online_features(features=refs, entity_rows=[{"person_id": person}]).to_dict().items()}


def _imitating_events(behaviour: pd.DataFrame, members: pd.Index, n: int) -> list[dict]:
    """`n` product events in the mean event-type mix of `members` (another persona's people)."""
    shares = behaviour.loc[behaviour.index.intersection(members), [c for c in behaviour.columns if c.startswith("share_")]].mean()
    shares = shares.drop(labels=[c for c in ("share_other", "share_blank") if c in shares.index]).clip(lower=0)
    counts = np.floor(shares / shares.sum() * n).astype(int)
    now = datetime.now(timezone.utc)
    events = []
    for column, count in counts.items():
        for i in range(int(count)):
            events.append({"event_type": column[len("share_") :], "event_time": (now - timedelta(minutes=i % 50)).isoformat(), "session_id": f"push-{i % 25}"})
    return events


def test_pushed_events_change_a_person_s_features_and_persona_online(living):
    client, home, version, published, behaviour = living
    assigned = published[published["persona_id"] >= 0]
    sizes = assigned["persona_id"].value_counts()
    source, target = sizes.index[0], sizes.index[1]  # the two largest personas
    # A confident member of `source` with few events, pushed far more events in `target`'s mix.
    candidates = assigned[(assigned["persona_id"] == source)].join(behaviour[["n_events"]]).sort_values(["n_events", "confidence"], ascending=[True, False])
    person = candidates.index[0]
    before = _online(home, person)
    assert before["persona_id"] == source and before["model_version"] == version
    events = _imitating_events(behaviour, assigned.index[assigned["persona_id"] == target], n=int(max(300, 20 * before["n_events"])))

    got = client.post(f"/persons/{person}/events", json={"events": events}, headers={"Authorization": "Bearer write-tok"})

    assert got.status_code == 200, got.text
    body = got.json()
    assert body["previous"]["persona_id"] == source
    assert body["persona_id"] == target, f"{len(events)} events in persona {target}'s mix left {person} in persona {body['persona_id']}"
    assert body["model_version"] == version
    after = _online(home, person)  # the stock Feast SDK sees the new state
    assert after["persona_id"] == target and after["persona_name"] == body["persona_name"]
    assert after["model_version"] == version and after["profile_model_version"] == version
    assert after["n_events"] == before["n_events"] + len(events)
    assert after["n_sessions"] == before["n_sessions"] + 25
    assert after["persona_description"] and after["persona_description"] != before["persona_description"]
    assert body["behaviour"]["n_events"] == after["n_events"]
    # Others are untouched.
    other = published.index[published.index != person][0]
    assert _online(home, other)["persona_id"] == published.loc[other, "persona_id"]


def test_two_pushes_add_up(living):
    client, home, _, published, _ = living
    person = published.index[-2]
    start = _online(home, person)["n_events"] or 0
    for _ in range(2):
        got = client.post(f"/persons/{person}/events", json={"events": [{"event_type": "login"}] * 3}, headers={"Authorization": "Bearer admin-tok"})
        assert got.status_code == 200, got.text
    assert _online(home, person)["n_events"] == start + 6


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, {"events": [{"event_type": "login"}]}, 401),
        ({"Authorization": "Bearer read-tok"}, {"events": [{"event_type": "login"}]}, 403),
        ({"Authorization": "Bearer analyst-tok"}, {"events": [{"event_type": "login"}]}, 403),
        ({"Authorization": "Bearer write-tok"}, {"events": []}, 422),
        ({"Authorization": "Bearer write-tok"}, {"events": [{"event_type": "teleported"}]}, 422),
        ({"Authorization": "Bearer write-tok"}, {"events": [{"event_type": "login", "event_time": "2999-01-01T00:00:00Z"}]}, 422),
        ({"Authorization": "Bearer write-tok"}, {"events": [{"event_type": "login", "event_time": "yesterday"}]}, 422),
        ({"Authorization": "Bearer write-tok"}, {"nothing": 1}, 422),
    ],
)
def test_push_auth_and_bad_events(living, headers, body, status):
    client, home, _, published, _ = living
    person = published.index[-3]
    before = _online(home, person)
    got = client.post(f"/persons/{person}/events", json=body, headers=headers)
    assert got.status_code == status, got.text
    assert isinstance(got.json()["detail"], (str, list))
    assert _online(home, person)["n_events"] == before["n_events"]  # nothing was applied


def test_unknown_person_is_404_and_writer_can_read(living):
    client, _, _, published, _ = living
    got = client.post("/persons/nobody-0000/events", json={"events": [{"event_type": "login"}]}, headers={"Authorization": "Bearer write-tok"})
    assert got.status_code == 404 and "nobody-0000" in got.json()["detail"]
    assert client.get(f"/persons/{published.index[0]}/persona", headers={"Authorization": "Bearer write-tok"}).status_code == 200
    assert client.get(f"/persons/{published.index[0]}/sensitive", headers={"Authorization": "Bearer write-tok"}).status_code == 403
