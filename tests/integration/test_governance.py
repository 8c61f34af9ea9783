"""Roles on the CLI (docs/governance.md "Roles"): every guarded command refused below its role, as
one line on stderr with exit 1, and written to the audit log (actor, role, action, outcome=denied).
Runs `personas` through its console entry on an empty temporary workspace: the guard comes before
any work, so no pipeline is needed."""

from __future__ import annotations


import pytest

from personaops import audit
from personaops.workspace import Workspace

from tests.helpers import run_cli

pytestmark = pytest.mark.integration
TOKENS = "r-tok:reader,a-tok:analyst,m-tok:ml-engineer,ad-tok:admin"


def _cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    return run_cli(monkeypatch, capsys, *args)


# (command, token given, role it has, role the command needs)
DENIALS = [
    (["models", "promote", "2", "--reason", "x"], "a-tok", "analyst", "ml-engineer", "models promote"),
    (["models", "rollback"], "r-tok", "reader", "ml-engineer", "models rollback"),
    (["promotion", "approve", "PR-1", "--reason", "x"], "a-tok", "analyst", "ml-engineer", "promotion approve"),
    (["promotion", "reject", "PR-1", "--reason", "x"], "r-tok", "reader", "ml-engineer", "promotion reject"),
    (["erase", "P0123456789ab"], "m-tok", "ml-engineer", "admin", "erase"),
    (["erase", "--source", "crm", "--key", "C1"], "a-tok", "analyst", "admin", "erase"),
    (["consent", "set", "P0123456789ab", "--purpose", "analytics", "--status", "revoked"], "m-tok", "ml-engineer", "admin", "consent set"),
    (["consent", "load", "consent.csv"], "a-tok", "analyst", "admin", "consent load"),
    (["explain", "P0123456789ab"], "r-tok", "reader", "analyst", "explain"),
    (["ask", "opportunities"], "r-tok", "reader", "analyst", "ask opportunities"),
]


@pytest.mark.parametrize("args,token,role,needed,action", DENIALS, ids=[d[4] + ":" + d[2] for d in DENIALS])
def test_each_guarded_command_is_refused_below_its_role_and_audited(args, token, role, needed, action, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PERSONAS_HOME", str(tmp_path))
    monkeypatch.setenv("PERSONAS_API_TOKENS", TOKENS)
    monkeypatch.setenv("PERSONAS_TOKEN", token)
    monkeypatch.setenv("USER", "carol")
    code, out, err = _cli(monkeypatch, capsys, *args)
    assert code == 1, (out, err)
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert f"needs the '{needed}' role" in err and f"'{role}'" in err
    entries = audit.read(Workspace(tmp_path).audit_log, "access_denied")
    assert [(e["actor"], e["role"], e["action"], e["required"], e["outcome"]) for e in entries] == [("carol", role, action, needed, "denied")]
    assert audit.verify(Workspace(tmp_path).audit_log).ok


def test_with_tokens_configured_the_cli_needs_one_and_a_forged_one_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PERSONAS_HOME", str(tmp_path))
    monkeypatch.setenv("PERSONAS_API_TOKENS", TOKENS)
    monkeypatch.delenv("PERSONAS_TOKEN", raising=False)
    code, _, err = _cli(monkeypatch, capsys, "erase", "P0123456789ab")
    assert code == 1 and "PERSONAS_TOKEN is not set" in err and err.count("\n") == 1
    assert audit.read(Workspace(tmp_path).audit_log, "access_denied")[-1]["role"] is None
    monkeypatch.setenv("PERSONAS_TOKEN", "forged")
    code, _, err = _cli(monkeypatch, capsys, "erase", "P0123456789ab")
    assert code == 1 and "PERSONAS_TOKEN matches no configured token" in err


def test_the_right_role_or_a_local_workspace_without_tokens_passes_the_guard(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PERSONAS_HOME", str(tmp_path))
    monkeypatch.setenv("PERSONAS_API_TOKENS", TOKENS)
    monkeypatch.setenv("PERSONAS_TOKEN", "ad-tok")
    code, _, err = _cli(monkeypatch, capsys, "erase", "P0123456789ab")  # admin: past the guard, then the person is unknown
    assert code == 1 and "needs the" not in err and "No identity" in err
    monkeypatch.delenv("PERSONAS_API_TOKENS")
    monkeypatch.delenv("PERSONAS_TOKEN")
    code, _, err = _cli(monkeypatch, capsys, "promotion", "approve", "PR-none", "--reason", "x")  # local admin
    assert code == 1 and "No held promotion 'PR-none'" in err
    monkeypatch.setenv("PERSONAS_CLI__ROLE", "analyst")  # a lowered local role is enforced too
    code, _, err = _cli(monkeypatch, capsys, "models", "rollback")
    assert code == 1 and "needs the 'ml-engineer' role" in err and "cli.role" in err
    assert [e["action"] for e in audit.read(Workspace(tmp_path).audit_log, "access_denied")] == ["models rollback"]
