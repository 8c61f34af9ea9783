"""Security checks of issue #11 that need no services: the API refuses oversized bodies (413) and
unknown fields (422), report routes refuse path traversal, and every comparison of a secret in
the code base is constant time (hmac.compare_digest). The no-secret-in-any-output check needs a
real run: tests/integration/test_faults.py scans that run's workspace, output, MLflow and Prefect."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from personaops.api import create_app
from personaops.config import load_config

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "sec-test-token"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from fastapi.testclient import TestClient

    cfg = load_config(environ={"PERSONAS_API__MAX_BODY_BYTES": "65536"})
    cfg.home = tmp_path_factory.mktemp("ws")
    app = create_app(cfg, environ={"PERSONAS_API_TOKENS": f"{TOKEN}:admin"})
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def test_oversized_bodies_are_refused_with_413_before_they_are_read(client):
    ids = [f"p{i:06d}" for i in range(8_000)]  # ~100 KB of JSON, over the 64 KiB limit
    got = client.post("/personas/lookup", json={"person_ids": ids})
    assert got.status_code == 413, got.text
    assert "65,536 bytes" in got.json()["detail"]
    events = {"events": [{"event_type": "login", "session_id": "s" * 150} for _ in range(500)]}
    assert client.post("/persons/p1/events", json=events).status_code == 413
    # A chunked body (no Content-Length) is counted as it arrives.
    chunks = (b'{"person_ids": [' + b",".join(b'"p%06d"' % i for i in range(k, k + 1000)) + b"]" for k in range(0, 8000, 1000))
    assert client.post("/personas/lookup", content=chunks, headers={"Content-Type": "application/json"}).status_code == 413
    # Under the limit the body reaches validation / the handler (no persons published here: 404/503, not 413).
    assert client.post("/personas/lookup", json={"person_ids": ids[:10]}).status_code not in (413, 422)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/personas/lookup", {"person_ids": ["p1"], "person_id_list": ["p2"]}),
        ("/personas/lookup", {"person_ids": ["p1"], "role": "admin"}),
        ("/persons/p1/events", {"events": [{"event_type": "login"}], "as_admin": True}),
        ("/persons/p1/events", {"events": [{"event_type": "login", "model_version": 3}]}),
    ],
)
def test_unknown_fields_are_422_not_ignored(client, path, body):
    got = client.post(path, json=body)
    assert got.status_code == 422, got.text
    assert "extra" in got.text.lower() or "not permitted" in got.text.lower()


@pytest.mark.parametrize(
    "path",
    [
        "/reports/..%2F..%2F..%2Fetc/passwd",
        "/reports/../../etc/passwd",
        "/reports/..%2F..%2Fpersonas.yaml/drift.html",
        "/reports/latest/..%2F..%2F..%2Fetc%2Fpasswd",
        "/reports/%2e%2e/%2e%2e%2fetc%2fpasswd",
        "/persons/..%2F..%2Fetc%2Fpasswd/persona",
    ],
)
def test_path_traversal_in_api_paths_is_refused(client, path):
    got = client.get(path)
    assert got.status_code in (400, 404, 422), (path, got.status_code)
    assert "root:" not in got.text


SECRET_NAMES = re.compile(r"(token|secret|passw|api_key|hmac|entry_hash|audit_key|credential)", re.I)
NOT_SECRET = re.compile(r"credentials\.scheme\b")  # the auth scheme's name ("bearer") is public


def _secret_comparisons() -> list[str]:
    """`==`, `!=`, `in`, `not in` whose operands mention a secret (token, password, HMAC ...)
    anywhere in the product code: each would leak how much of a guess was right through timing."""
    found = []
    for folder in ("personaops", "models", "monitoring", "flows"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
                    segment = ast.get_source_segment(source, node) or ""
                    if SECRET_NAMES.search(segment) and not NOT_SECRET.search(segment):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {segment[:120]}")
                # A secret used as a dict key is a hash lookup, not a constant-time comparison.
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and SECRET_NAMES.search(ast.get_source_segment(source, node.func.value) or ""):
                    arg = ast.get_source_segment(source, node.args[0]) if node.args else ""
                    if re.search(r"(given|credentials|presented|bearer)", arg or "", re.I):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.get_source_segment(source, node)[:120]}")
    return found


def test_every_secret_comparison_is_constant_time():
    assert _secret_comparisons() == []
    # ... and the places that check secrets do use hmac.compare_digest (the scan above is not vacuous):
    # the one token check (roles.token_role) and the audit chain's HMAC ...
    for module in ("personaops/roles.py", "personaops/audit.py"):
        assert "hmac.compare_digest(" in (ROOT / module).read_text(encoding="utf-8"), module
    # ... and every place that learns a role from a token goes through roles.token_role.
    for module in ("personaops/api.py", "personaops/catalog.py", "personaops/serving.py"):
        assert "token_role(" in (ROOT / module).read_text(encoding="utf-8"), module


def test_token_role_compares_every_token():
    from personaops.roles import token_role

    tokens = {"tok-a": "reader", "tok-b": "analyst"}
    assert token_role("tok-b", tokens) == "analyst"
    assert token_role(b"tok-a", tokens) == "reader"
    assert token_role("tok-", tokens) is None and token_role("", tokens) is None and token_role(None, tokens) is None


def test_the_scan_catches_a_plain_token_comparison(tmp_path):
    bad = "def check(given, token):\n    return given == token\n"
    tree = ast.parse(bad)
    compares = [n for n in ast.walk(tree) if isinstance(n, ast.Compare)]
    assert compares and SECRET_NAMES.search(ast.get_source_segment(bad, compares[0]))


def test_api_errors_never_echo_the_token(client):
    wrong = "wrong-" + TOKEN
    got = client.get("/personas", headers={"Authorization": f"Bearer {wrong}"})
    assert got.status_code == 401
    assert wrong not in got.text and TOKEN not in got.text


# --- file-taking commands: names and ids from input never become paths outside the workspace ---
def _personas(args: list[str], home: Path, monkeypatch, capsys) -> tuple[int, str]:
    import sys

    from personaops.cli import main

    monkeypatch.setenv("PERSONAS_HOME", str(home))
    monkeypatch.delenv("PERSONAS_PROFILE", raising=False)
    monkeypatch.setattr(sys, "argv", ["personas", *args])
    with pytest.raises(SystemExit) as done:
        main()
    captured = capsys.readouterr()
    return done.value.code, captured.err + captured.out


def test_traversal_in_a_source_name_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "crm.csv").write_text("customer_id,email\n1,a@example.com\n")
    (tmp_path / "sources.yaml").write_text("sources:\n  - name: ../../evil\n    kind: crm\n    path: crm.csv\n    identifiers: {customer_id: customer_id, email: email}\n")
    code, text = _personas(["run", "--sources", str(tmp_path / "sources.yaml")], tmp_path / "ws", monkeypatch, capsys)
    assert code == 1 and "Traceback" not in text
    assert "'name'" in text and "should match pattern" in text
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


def test_traversal_in_a_run_id_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "ws" / "runs").mkdir(parents=True)
    code, text = _personas(["replay", "../../../../etc/passwd"], tmp_path / "ws", monkeypatch, capsys)
    assert code == 1 and "Traceback" not in text and "root:" not in text
    assert "has no run record" in text


def test_a_file_that_is_not_a_consent_csv_is_refused_without_echoing_its_content(tmp_path, monkeypatch, capsys):
    secret_file = tmp_path / "not-consent.txt"
    secret_file.write_text("root:x:0:0:secret-line-xyz:/root:/bin/bash\n")
    code, text = _personas(["consent", "load", str(secret_file)], tmp_path / "ws", monkeypatch, capsys)
    assert code == 1 and "Traceback" not in text
    assert "secret-line-xyz" not in text
