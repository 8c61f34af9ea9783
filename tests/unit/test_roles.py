"""Roles: one order for the API and the CLI, and the CLI's local identity (personaops/roles.py)."""

from __future__ import annotations

import pytest

from personaops import audit, roles
from personaops.config import load_config
from personaops.errors import ConfigError
from personaops.workspace import Workspace


def test_one_order_reader_analyst_ml_engineer_admin():
    from personaops import api

    assert api.ROLES is roles.ROLES == ("reader", "analyst", "ml-engineer", "admin")
    assert roles.allows("ml-engineer", "analyst") and roles.allows("admin", "ml-engineer")
    assert not roles.allows("analyst", "ml-engineer") and not roles.allows("reader", "analyst")
    assert roles.allows("writer", "reader") and not roles.allows("writer", "analyst")  # a writer reads like a reader
    assert not roles.allows(None, "reader")
    assert api.api_tokens(load_config(environ={}), {"PERSONAS_API_TOKENS": "t:ml-engineer"}) == {"t": "ml-engineer"}


def test_cli_identity_local_default_config_role_and_tokens():
    cfg = load_config(environ={})
    assert roles.cli_identity(cfg, {"USER": "ana"}) == roles.Identity("ana", "admin", "local (no tokens configured)")
    lowered = load_config(environ={"PERSONAS_CLI__ROLE": "analyst"})
    assert roles.cli_identity(lowered, {"USER": "ana"}).role == "analyst"
    env = {"USER": "ana", "PERSONAS_API_TOKENS": "r-tok:reader,m-tok:ml-engineer"}
    assert roles.cli_identity(cfg, env).role is None  # tokens configured: the CLI needs one
    assert roles.cli_identity(cfg, {**env, "PERSONAS_TOKEN": "m-tok"}) == roles.Identity("ana", "ml-engineer", "PERSONAS_TOKEN")
    with pytest.raises(ConfigError, match="PERSONAS_TOKEN matches no configured token"):
        roles.cli_identity(cfg, {**env, "PERSONAS_TOKEN": "forged"})
    with pytest.raises(ConfigError, match="cli.role"):
        load_config(environ={"PERSONAS_CLI__ROLE": "root"})


def test_a_denial_is_one_sentence_and_audited(tmp_path):
    ws = Workspace(tmp_path)
    who = roles.Identity("bob", "analyst", "PERSONAS_TOKEN")
    with pytest.raises(roles.AccessDeniedError) as denied:
        roles.require(ws, who, "erase")
    message = str(denied.value)
    assert "needs the 'admin' role" in message and "'analyst'" in message and "\n" not in message
    entry = audit.read(ws.audit_log, "access_denied")[-1]
    assert (entry["actor"], entry["role"], entry["action"], entry["required"], entry["outcome"]) == ("bob", "analyst", "erase", "admin", "denied")
    assert roles.require(ws, roles.Identity("eve", "ml-engineer", "PERSONAS_TOKEN"), "models promote").role == "ml-engineer"
    assert len(audit.read(ws.audit_log, "access_denied")) == 1  # an allowed action writes no denial
    assert audit.verify(ws.audit_log).ok
