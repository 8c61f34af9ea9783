"""`personas serve`'s API on the pipeline's real workspace: Feast online reads, MLflow catalogue,
the auth matrix, and user errors as 4xx (never 500)."""

from __future__ import annotations

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from personaops.api import create_app
from personaops.config import load_config
from personaops.errors import ConfigError
from personaops.workspace import Workspace

pytestmark = pytest.mark.integration
TOKENS = "read-tok:reader,analyst-tok:analyst,admin-tok:admin"
AUTH = {role: {"Authorization": f"Bearer {role}-tok"} for role in ("read", "analyst", "admin")}


def _cfg(home):
    cfg = load_config(environ={})
    cfg.home = home
    return cfg


@pytest.fixture(scope="module")
def served(pipeline):
    """(TestClient, published assignments of the serving version, a person with sensitive attributes)."""
    home, record = pipeline
    client = TestClient(create_app(_cfg(home), environ={"PERSONAS_API_TOKENS": TOKENS}), raise_server_exceptions=False)
    published = pd.read_parquet(Workspace(home).feature_table("persona_assignment"))
    published = published[published["model_version"] == record["publish"]["model_version"]].set_index("person_id")
    sensitive = pd.read_parquet(home / "audit" / "person_sensitive.parquet")
    return client, published, str(sensitive["person_id"].iloc[0])


def test_a_person_s_persona_is_what_the_pipeline_published(served):
    client, published, _ = served
    person = published.index[7]
    got = client.get(f"/persons/{person}/persona", headers=AUTH["read"])
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["person_id"] == person
    assert body["persona_id"] == published.loc[person, "persona_id"]
    assert body["persona_name"] == published.loc[person, "persona_name"]
    assert body["model_version"] == published.loc[person, "model_version"]
    assert body["confidence"] == pytest.approx(published.loc[person, "confidence"])


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/persons/{p}/persona", {}, 401),
        ("/persons/{p}/persona", {"Authorization": "Bearer not-a-token"}, 401),
        ("/persons/{p}/persona", {"Authorization": "Basic cmVhZC10b2s6"}, 401),
        ("/persons/{p}/persona", AUTH["read"], 200),
        ("/persons/{p}/persona", AUTH["admin"], 200),
        ("/personas", {}, 401),
        ("/personas", AUTH["read"], 200),
        ("/persons/{p}/sensitive", {}, 401),
        ("/persons/{p}/sensitive", AUTH["read"], 403),
        ("/persons/{p}/sensitive", AUTH["analyst"], 200),
        ("/persons/{p}/sensitive", AUTH["admin"], 200),
        ("/persons/{p}/explain", AUTH["read"], 403),
        ("/persons/{p}/explain", AUTH["analyst"], 200),
    ],
)
def test_auth_matrix(served, path, headers, status):
    client, published, with_sensitive = served
    person = with_sensitive if with_sensitive in published.index else published.index[0]
    got = client.get(path.format(p=person), headers=headers)
    assert got.status_code == status, got.text
    if status == 401:
        assert got.headers["www-authenticate"] == "Bearer"
    if status in (401, 403):
        assert got.json()["detail"].endswith(".")


def test_sensitive_attributes_and_explanation_come_from_the_workspace(served, pipeline):
    client, published, person = served
    attributes = client.get(f"/persons/{person}/sensitive", headers=AUTH["analyst"]).json()["attributes"]
    expected = pd.read_parquet(pipeline[0] / "audit" / "person_sensitive.parquet").set_index("person_id").loc[person]
    assert set(attributes) == set(expected.index) and attributes
    person = published.index[3]
    explained = client.get(f"/persons/{person}/explain", headers=AUTH["analyst"]).json()
    records = pd.read_parquet(pipeline[0] / "identity" / "record_person.parquet")
    assert sorted((r["source"], r["source_key"]) for r in explained["records"]) == sorted(
        records[records["person_id"] == person][["source", "source_key"]].itertuples(index=False, name=None)
    )
    assert explained["persona"]["persona_id"] == published.loc[person, "persona_id"] and explained["run_id"]


def test_unknown_person_is_404_for_every_person_endpoint(served):
    client, _, _ = served
    for path in ("/persons/nobody-0000/persona", "/persons/nobody-0000/sensitive", "/persons/nobody-0000/explain"):
        got = client.get(path, headers=AUTH["admin"])
        assert got.status_code == 404, (path, got.text)
        assert "nobody-0000" in got.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/persons/has%20space/persona", None),
        ("get", "/persons/" + "x" * 200 + "/persona", None),
        ("post", "/personas/lookup", {}),
        ("post", "/personas/lookup", {"person_ids": []}),
        ("post", "/personas/lookup", {"person_ids": "p1"}),
        ("post", "/personas/lookup", {"person_ids": [1, 2]}),
        ("post", "/personas/lookup", {"person_ids": ["ok", "bad id"]}),
        ("post", "/personas/lookup", {"person_ids": [f"p{i}" for i in range(1001)]}),
        ("post", "/personas/lookup", "not json"),
    ],
)
def test_malformed_input_is_422(served, method, path, body):
    client, _, _ = served
    kwargs = {"content": body} if isinstance(body, str) else {"json": body} if body is not None else {}
    got = getattr(client, method)(path, headers=AUTH["read"], **kwargs)
    assert got.status_code == 422, got.text


def test_batch_lookup_returns_found_persons_in_order_and_lists_the_unknown(served):
    client, published, _ = served
    ids = [published.index[5], "nobody-1", published.index[2], published.index[5]]
    got = client.post("/personas/lookup", json={"person_ids": ids}, headers=AUTH["read"])
    assert got.status_code == 200, got.text
    body = got.json()
    assert [p["person_id"] for p in body["personas"]] == [published.index[5], published.index[2]]
    assert [p["persona_id"] for p in body["personas"]] == published.loc[[published.index[5], published.index[2]], "persona_id"].tolist()
    assert body["not_found"] == ["nobody-1"]


def test_catalogue_is_the_champion_s_personas(served, pipeline):
    client, published, _ = served
    got = client.get("/personas", headers=AUTH["read"])
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["version"] == pipeline[1]["publish"]["model_version"]
    assert {p["persona_id"] for p in body["personas"]} >= set(published["persona_id"].unique()) - {-1}
    assert sum(p["size"] for p in body["personas"]) <= len(published)


def test_health_metrics_and_openapi_are_open(served):
    client, published, _ = served
    client.get(f"/persons/{published.index[0]}/persona", headers=AUTH["read"])
    client.get("/persons/nobody-2/persona", headers=AUTH["read"])
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["champion_version"] >= 1
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'personas_api_requests_total{method="GET",route="/persons/{person_id}/persona",status="200"}' in text
    assert 'personas_api_requests_total{method="GET",route="/persons/{person_id}/persona",status="404"}' in text
    assert "personas_api_request_seconds_bucket" in text
    spec = client.get("/openapi.json").json()
    assert {"/persons/{person_id}/persona", "/personas/lookup", "/personas", "/health", "/metrics", "/persons/{person_id}/sensitive"} <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_no_token_configured_refuses_to_start_unless_insecure_dev(pipeline):
    home, _ = pipeline
    with pytest.raises(ConfigError, match="--insecure-dev"):
        create_app(_cfg(home), environ={})
    open_client = TestClient(create_app(_cfg(home), insecure_dev=True, environ={}))
    assert open_client.get("/personas").status_code == 200


def _serve(home, port: int, env: dict[str, str], *flags: str):
    import os
    import subprocess
    import sys

    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PERSONAS_", "MLFLOW_", "PREFECT_"))}
    full_env.update(env, PERSONAS_HOME=str(home))
    code = "import sys; from personaops.cli import main; sys.argv = ['personas', 'serve', *sys.argv[1:]]; main()"
    return subprocess.Popen([sys.executable, "-c", code, "--port", str(port), *flags], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_personas_serve_refuses_to_start_without_a_token(pipeline):
    server = _serve(pipeline[0], 1, {})
    _, stderr = server.communicate(timeout=120)
    assert server.returncode == 1
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: No API token is configured") and "Traceback" not in stderr


def _read_response(conn: socket.socket) -> bytes:
    """One whole HTTP/1.1 response from a raw socket: recv returns what has arrived, and the
    headers and the body may come in separate segments."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_personas_serve_answers_over_loopback_and_spreads_connections_over_its_workers(pipeline, served, tmp_path):
    """`personas serve --workers 2` over loopback; connections opened at once spread over both
    workers (uvicorn's own accept often left all of them to one: personaops.http_workers)."""
    import socket
    import time

    import httpx

    from personaops.http_workers import SLOTS_ENV, live_workers

    _, published, _ = served
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    slots = str(tmp_path / "serve.slots")
    server = _serve(pipeline[0], port, {"PERSONAS_API_TOKENS": "loop-tok:reader", SLOTS_ENV: slots}, "--workers", "2")
    try:
        deadline = time.monotonic() + 240  # a loaded 2-CPU host needs about 2 min to start it (131 s seen at load 23)
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read() if server.poll() is not None else "no answer"
                time.sleep(0.3)
        assert health.status_code == 200
        person = published.index[11]
        got = httpx.get(f"http://127.0.0.1:{port}/persons/{person}/persona", headers={"Authorization": "Bearer loop-tok"}, timeout=60)
        assert got.status_code == 200 and got.json()["persona_id"] == published.loc[person, "persona_id"]
        assert httpx.get(f"http://127.0.0.1:{port}/personas", timeout=60).status_code == 401
        while len(live_workers(slots)) < 2:  # the second worker may still be importing
            assert server.poll() is None and time.monotonic() < deadline, "the second worker did not start"
            time.sleep(0.3)
        connections = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(10)]  # at once, as a load generator does
        try:
            time.sleep(1.0)  # accepted, and the counts published
            spread = sorted(live_workers(slots).values())
            assert len(spread) == 2 and sum(spread) >= 10 and spread[0] >= 3, spread
            request = f"GET /persons/{person}/persona HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer loop-tok\r\n\r\n".encode()
            for c in connections:
                c.sendall(request)
            answers = [_read_response(c) for c in connections]
            assert all(a.startswith(b"HTTP/1.1 200") and f'"person_id":"{person}"'.encode() in a for a in answers), answers[:2]
        finally:
            for c in connections:
                c.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert not any(live_workers(slots)), "a worker outlived the server"


def test_the_fast_persona_read_answers_like_the_fastapi_route_and_passes_everything_else_on(served, pipeline):
    """personaops.serving.FastPersonaRead: the ordinary 200, 404 and 401 answers of GET
    /persons/{id}/persona and POST /personas/lookup without FastAPI's per-request machinery, byte
    for byte the FastAPI routes' answers (status, headers, body) and counted alike in /metrics;
    every other case (malformed ids or bodies, other methods and routes) reaches the FastAPI app,
    a batch body it already read included."""
    import asyncio
    import json

    from personaops.api import PERSON_ID_PATTERN
    from personaops.serving import FastPersonaRead

    _, published, _ = served
    home, _ = pipeline
    environ = {"PERSONAS_API_TOKENS": TOKENS + ",w-tok:writer"}
    fast_app = create_app(_cfg(home), environ=environ)
    plain_app = create_app(_cfg(home), environ=environ)
    plain_app.user_middleware = [m for m in plain_app.user_middleware if m.cls is not FastPersonaRead]
    fast, plain = TestClient(fast_app, raise_server_exceptions=False), TestClient(plain_app, raise_server_exceptions=False)
    persons = list(published.index[:25])
    statuses: list[int] = []

    def same(method: str, path: str, headers: dict, **body) -> None:
        a, b = fast.request(method, path, headers=headers, **body), plain.request(method, path, headers=headers, **body)
        assert (a.status_code, a.headers.raw, a.content) == (b.status_code, b.headers.raw, b.content), (method, path, headers, body)
        assert a.status_code != 500
        statuses.append(a.status_code)

    for person in persons:
        same("GET", f"/persons/{person}/persona", AUTH["read"])
    for person in persons[:3]:
        same("GET", f"/persons/{person}/persona", {"Authorization": "Bearer w-tok"})
        same("GET", f"/persons/{person}/persona?x=1", AUTH["admin"])
    json_ct = {"Content-Type": "application/json"}
    cases = [
        ("GET", "/persons/nobody-0001/persona", AUTH["read"], {}),
        ("GET", "/persons/nobody-0002/persona", AUTH["analyst"], {}),
        ("GET", f"/persons/{persons[0]}/persona", {}, {}),
        ("GET", f"/persons/{persons[0]}/persona", {"Authorization": "Bearer not-a-token"}, {}),
        ("GET", f"/persons/{persons[0]}/persona", {"Authorization": "Basic cmVhZC10b2s6"}, {}),
        ("GET", f"/persons/{persons[0]}/persona", {"Authorization": "Bearer"}, {}),
        ("GET", f"/persons/{persons[0]}/persona", {"Authorization": "Bearer "}, {}),
        ("GET", f"/persons/{persons[0]}/persona", {"Authorization": "bearer   read-tok  "}, {}),
        ("GET", f"/persons/{persons[0]}/persona", {"Authorization": b"Bearer t\xf6k"}, {}),
        ("GET", "/persons/nobody-0001/persona", {}, {}),
        ("GET", "/persons/has%20space/persona", AUTH["read"], {}),
        ("GET", "/persons/-bad/persona", {}, {}),
        ("GET", "/persons/a/b/persona", AUTH["read"], {}),
        ("HEAD", f"/persons/{persons[0]}/persona", AUTH["read"], {}),
        ("DELETE", f"/persons/{persons[0]}/persona", AUTH["read"], {}),
        ("POST", "/personas/lookup", AUTH["read"], {"json": {"person_ids": persons[:10]}}),
        ("POST", "/personas/lookup", AUTH["read"], {"json": {"person_ids": [persons[3], "nobody-1", persons[3], persons[1], "nobody-1"]}}),
        ("POST", "/personas/lookup", AUTH["read"], {"json": {"person_ids": ["nobody-1", "nobody-2"]}}),
        ("POST", "/personas/lookup", {"Authorization": "Bearer w-tok", "Content-Type": "application/json; charset=utf-8"}, {"content": json.dumps({"person_ids": persons[:2]})}),
        ("POST", "/personas/lookup", AUTH["read"], {"json": {"person_ids": persons + [f"p{i}" for i in range(1000 - len(persons))]}}),
        ("POST", "/personas/lookup", {**AUTH["read"], **json_ct}, {"content": [b'{"person_ids": ["', persons[0].encode(), b'"]}']}),
        ("POST", "/personas/lookup", {}, {"json": {"person_ids": persons[:2]}}),
        ("POST", "/personas/lookup", {"Authorization": "Bearer not-a-token"}, {"json": {"person_ids": persons[:2]}}),
        ("POST", "/personas/lookup", {}, {"content": "not json", "headers": json_ct}),
        ("POST", "/personas/lookup", AUTH["read"], {"json": {"person_ids": [f"p{i}" for i in range(1001)]}}),
        ("POST", "/personas/lookup", AUTH["read"], {"json": {"person_ids": []}}),
        ("POST", "/personas/lookup", AUTH["read"], {"json": {"person_ids": persons[:2], "extra": 1}}),
        ("POST", "/personas/lookup", AUTH["read"], {"json": {"person_ids": [1, 2]}}),
        ("POST", "/personas/lookup", AUTH["read"], {"json": {"person_ids": persons[0]}}),
        ("POST", "/personas/lookup", AUTH["read"], {"json": {"person_ids": ["ok", "bad id"]}}),
        ("POST", "/personas/lookup", AUTH["read"], {"json": [persons[0]]}),
        ("POST", "/personas/lookup", {**AUTH["read"], **json_ct}, {"content": b'{"person_ids": ["a",'}),
        ("POST", "/personas/lookup", {**AUTH["read"], **json_ct}, {"content": b""}),
        ("POST", "/personas/lookup", {**AUTH["read"], "Content-Type": "text/plain"}, {"content": json.dumps({"person_ids": persons[:2]})}),
        ("POST", "/personas/lookup", AUTH["read"], {"content": json.dumps({"person_ids": persons[:2]})}),
        ("GET", "/personas/lookup", AUTH["read"], {}),
    ]
    for method, path, headers, body in cases:
        extra = body.pop("headers", {})
        same(method, path, {**headers, **extra}, **body)
    assert {200, 401, 404, 405, 422} <= set(statuses)
    metric_lines = [
        sorted(line for line in c.get("/metrics").text.splitlines() if line.startswith(("personas_api_requests_total", "personas_api_persons_looked_up_total")))
        for c in (fast, plain)
    ]  # fmt: skip
    assert metric_lines[0] == metric_lines[1] and len(metric_lines[0]) >= 8

    # Which requests it answers itself: an ASGI app behind it records what reaches it.
    reached: list[str] = []

    async def behind(scope, receive, send):
        body = b""
        while True:  # the body, as the client sent it
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        reached.append(f"{scope['path']}:{body.decode()}")
        await send({"type": "http.response.start", "status": 599, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    service = fast_app.state.service
    fast_read = FastPersonaRead(behind, service=service, tokens={"read-tok": "reader", "w-tok": "writer"}, router=fast_app.router, id_pattern=PERSON_ID_PATTERN)

    def call(path: str, token: str | None, method: str = "GET", body: bytes = b"") -> int:
        sent: list[dict] = []
        chunks = [body[:5], body[5:]]

        async def receive():
            return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

        async def send(message):
            sent.append(message)

        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        if method == "POST":
            headers.append((b"content-type", b"application/json"))
        asyncio.run(fast_read({"type": "http", "method": method, "path": path, "headers": headers, "root_path": ""}, receive, send))
        return sent[0]["status"]

    assert service.reads_locally()
    batch = json.dumps({"person_ids": [persons[1], "nobody-3"]}).encode()
    assert [call(f"/persons/{persons[1]}/persona", "read-tok"), call(f"/persons/{persons[1]}/persona", "w-tok")] == [200, 200]
    assert [call("/persons/nobody-0002/persona", "read-tok"), call(f"/persons/{persons[1]}/persona", None), call(f"/persons/{persons[1]}/persona", "read-to")] == [404, 401, 401]
    assert [call("/personas/lookup", "read-tok", "POST", batch), call("/personas/lookup", None, "POST", batch)] == [200, 401]
    assert reached == []
    passed_on = [
        (f"/persons/{persons[1]}/persona", "read-tok", "POST", b""),
        ("/persons/-bad/persona", "read-tok", "GET", b""),
        ("/persons/a/b/persona", "read-tok", "GET", b""),
        (f"/persons/{persons[1]}/sensitive", "read-tok", "GET", b""),
        ("/personas/lookup", "read-tok", "POST", b'{"person_ids": []}'),
        ("/personas/lookup", None, "POST", b'{"person_ids": ["bad id"]}'),
        ("/personas/lookup", "read-tok", "POST", b'{"person_ids": ["a"], "x": 1}'),
    ]
    for path, token, method, body in passed_on:
        assert call(path, token, method, body) == 599, (path, token, method, body)
    assert reached == [f"{path}:{body.decode()}" for path, _, _, body in passed_on]
