import pytest

from monitoring.policy import DEFAULT_POLICY, Policy, decide, load_policy
from personaops.errors import ConfigError


def test_the_most_severe_fired_action_wins():
    policy = load_policy()
    results = {
        "features": {"drifted_share": 0.5},  # retrain
        "quality": {"max_quarantine_share": 0.4, "max_missing_increase": 0.0, "max_accepted_change": 0.0},  # review
        "persona_mix": {"total_variation": 0.01, "smallest_current_share": 0.2},
    }
    decision = decide(results, policy)
    assert decision.action == "review"
    assert {f["rule"] for f in decision.fired} == {"feature_drift", "broken_source"}


def test_nothing_fires_on_calm_results_and_missing_sections_are_skipped():
    results = {"features": {"drifted_share": 0.05}, "persona_mix": {"total_variation": 0.02, "smallest_current_share": 0.15}}
    assert decide(results, load_policy()).action == "none"


def test_rollback_outranks_everything():
    results = {"persona_mix": {"total_variation": 0.5, "smallest_current_share": 0.0}}
    assert decide(results, load_policy()).action == "rollback"


def test_a_misspelt_metric_is_a_config_error(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("rules:\n  - {name: x, metric: qualty.max_quarantine_share, above: 0.1, action: review}\n")
    with pytest.raises(ConfigError, match="qualty"):
        load_policy(path)
    path.write_text("rules:\n  - {name: x, metric: quality.max_quarantine_share, action: review}\n")
    with pytest.raises(ConfigError, match="above / below"):
        load_policy(path)


def test_empty_policy_setting_means_the_default_file():
    assert load_policy("").rules == load_policy(DEFAULT_POLICY).rules
    assert isinstance(load_policy(None), Policy)
