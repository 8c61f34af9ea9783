"""API tokens and roles: from personas.yaml's api section and $PERSONAS_API_TOKENS."""

import pytest

from personaops.api import api_tokens
from personaops.config import load_config
from personaops.errors import ConfigError


def test_tokens_from_config_and_environment():
    cfg = load_config(environ={"PERSONAS_API__TOKENS": "{cfg-tok: analyst}"})
    assert api_tokens(cfg, {"PERSONAS_API_TOKENS": "abc123:reader, def456:admin"}) == {"cfg-tok": "analyst", "abc123": "reader", "def456": "admin"}
    with pytest.raises(ConfigError, match="role 'root'"):
        api_tokens(cfg, {"PERSONAS_API_TOKENS": "abc:root"})
    with pytest.raises(ConfigError, match="token:role"):
        api_tokens(cfg, {"PERSONAS_API_TOKENS": "justatoken"})
