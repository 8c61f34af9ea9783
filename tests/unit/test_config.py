from pathlib import Path

import pytest

from personaops.config import load_config
from personaops.errors import ConfigError


def test_defaults_without_a_file(tmp_path):
    cfg = load_config(environ={"PERSONAS_HOME": str(tmp_path / "ws")})
    assert cfg.home == (tmp_path / "ws").resolve()
    assert cfg.profile == "local"
    assert cfg.model.k_min <= cfg.model.k_max
    assert (cfg.feature_repo / "feature_store.yaml").is_file()


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "personas.yaml"
    path.write_text("model:\n  k_maxx: 4\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    assert str(path) in str(exc.value) and "model.k_maxx" in str(exc.value)


def test_invalid_value_names_key(tmp_path):
    path = tmp_path / "personas.yaml"
    path.write_text("profile: cloudy\n")
    with pytest.raises(ConfigError, match="profile"):
        load_config(path, environ={})


def test_environment_overrides_file(tmp_path):
    path = tmp_path / "personas.yaml"
    path.write_text("model:\n  k_max: 9\n  seed: 3\n")
    cfg = load_config(path, environ={"PERSONAS_MODEL__K_MAX": "6", "PERSONAS_IDENTITY__LINK_KEYS": "[email, phone]"})
    assert cfg.model.k_max == 6 and cfg.model.seed == 3
    assert cfg.identity.link_keys == ["email", "phone"]


def test_missing_config_file_is_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Path(tmp_path / "nope.yaml"), environ={})
