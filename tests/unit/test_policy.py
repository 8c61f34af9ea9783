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


# --- the reference profile drift check (monitoring/drift.py) ------------------------------------
def _frames(n: int = 4000):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(3)
    ref = pd.DataFrame({"count": rng.poisson(4, n).astype(float), "days": rng.lognormal(1, 0.7, n), "flag": (rng.random(n) < 0.3).astype(float)})
    cur = pd.DataFrame({"count": rng.poisson(4, n).astype(float), "days": rng.lognormal(1.3, 0.7, n), "flag": (rng.random(n) < 0.5).astype(float)})
    cur.loc[:99, "days"] = np.nan
    return ref, cur


def test_profile_drift_scores_are_evidentlys_methods(tmp_path):
    import numpy as np
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import wasserstein_distance

    from monitoring.drift import ReferenceProfile, build_profile, column_drift

    ref, cur = _frames()
    build_profile(ref, list(ref.columns), 3).save(tmp_path)
    profile = ReferenceProfile.load(tmp_path)  # what a later pass reads back
    result = column_drift(profile, cur)
    days = cur["days"].dropna()
    assert abs(result["column_scores"]["days"]["score"] - wasserstein_distance(ref["days"], days) / np.std(ref["days"])) < 0.01
    shares = [(ref["flag"] == v).mean() for v in (0, 1)], [(cur["flag"] == v).mean() for v in (0, 1)]
    assert abs(result["column_scores"]["flag"]["score"] - jensenshannon(*shares)) < 1e-9
    assert result["drifted_columns"] == ["days", "flag"] and abs(result["drifted_share"] - 2 / 3) < 1e-9
    assert result["column_scores"]["count"]["method"] == "wasserstein" and profile.model_version == 3


def test_profile_change_measures_how_far_the_current_data_moved_between_passes():
    """monitoring/monitor.py reuses the last drawn Evidently report only while every column moved
    less than REUSE_MOVE since it; the move is on the drift tests' scales (normed by the reference)."""
    import numpy as np
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import wasserstein_distance

    from monitoring.drift import build_profile, profile_change

    ref, cur = _frames()
    columns = list(ref.columns)
    reference = build_profile(ref, columns)
    same = profile_change(reference, build_profile(cur, columns), build_profile(cur.copy(), columns))
    assert same == {"count": 0.0, "days": 0.0, "flag": 0.0}
    moved = cur.copy()
    moved["days"] = moved["days"] + 0.5 * np.std(ref["days"])  # half a reference spread
    moved.loc[:399, "flag"] = 1.0
    change = profile_change(reference, build_profile(cur, columns), build_profile(moved, columns))
    assert change["count"] == 0.0 and abs(change["days"] - 0.5) < 0.01
    days = cur["days"].dropna()
    assert abs(wasserstein_distance(days, days + 0.5 * np.std(ref["days"])) / np.std(ref["days"]) - change["days"]) < 0.01
    shares = [(cur["flag"] == v).mean() for v in (0, 1)], [(moved["flag"] == v).mean() for v in (0, 1)]
    assert abs(change["flag"] - jensenshannon(*shares)) < 1e-9 and change["flag"] > 0.02
    moved.loc[:399, "count"] = np.nan  # 10% more missing values
    assert abs(profile_change(reference, build_profile(cur, columns), build_profile(moved, columns))["count"] - 0.1) < 1e-9


def test_profile_centroid_shift_is_in_units_of_training_spread():
    import numpy as np
    import pandas as pd

    from monitoring.drift import build_profile, centroid_shift

    x = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [10.0, 12.0]])
    labels = np.array([0, 0, 1, 1])
    profile = build_profile(pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0]}), ["a"], 1, x, labels)
    shifted = centroid_shift(profile, x + np.array([0.5, 0.0]), labels)
    assert shifted["by_persona"] == {0: 0.5, 1: 0.5} and shifted["max_shift"] == 0.5


# --- events and the deployments that react to them -----------------------------------------------
def test_the_drift_trigger_in_prefect_yaml_matches_the_monitor_event():
    from pathlib import Path

    import yaml
    from prefect.events import DeploymentTriggerTypes
    from prefect.events.schemas.events import Resource
    from pydantic import TypeAdapter

    from monitoring.events import DRIFT_EVENT, decision_event

    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "flows" / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert deployments["monitor-personas-every-6h"]["schedules"] and deployments["build-personas-daily"]["schedules"]
    assert deployments["monitor-personas-every-6h"]["parameters"]["retrain_via_event"] is True
    for d in deployments.values():  # every entrypoint names a flow that exists
        module, _, name = d["entrypoint"].partition(":")
        text = (Path(__file__).resolve().parents[2] / module).read_text()
        assert f"def {name}(" in text, d["entrypoint"]
    retrain = deployments["retrain-personas-on-drift"]
    (trigger,) = [TypeAdapter(DeploymentTriggerTypes).validate_python(t) for t in retrain["triggers"]]
    event = decision_event("persona-model", "/ws", "R1", 2, "retrain", [], {"monitoring": "/ws/reports/R1/monitoring.json"})
    assert event["event"] == DRIFT_EVENT and DRIFT_EVENT in trigger.expect
    assert trigger.match.matches(Resource(event["resource"]))
    calm = decision_event("persona-model", "/ws", "R2", 2, "none", [], {})
    assert calm["event"] not in trigger.expect
    assert set(trigger.parameters) == {"home", "monitoring_run", "report"}
    assert event["payload"]["report"] == "/ws/reports/R1/monitoring.json" and event["payload"]["home"] == "/ws"


def test_group_representation_flags_a_group_that_went_missing_and_not_noise():
    import numpy as np
    import pandas as pd

    from monitoring.checks import group_representation

    persons = pd.Index([f"P{i}" for i in range(400)], name="person_id")
    groups = pd.DataFrame({"region": np.where(np.arange(400) < 100, "north", "south")}, index=persons)

    def rows(keep_north: float, seed: int) -> pd.DataFrame:
        r = np.random.default_rng(seed)
        counts = r.poisson(30, size=400)
        pid = np.repeat(persons.to_numpy(), counts)
        keep = ~np.isin(pid, persons[:100]) | (r.random(len(pid)) < keep_north)
        return pd.DataFrame({"source": "events", "person_id": pid[keep]})

    before = rows(1.0, 1)
    same = group_representation(before, rows(1.0, 2), groups)
    assert same["cells"] == 2 and same["max_shift"] == 0.0 and same["largest_z"] < 3.5
    biased = group_representation(before, rows(0.2, 3), groups)
    assert biased["max_shift"] > 0.15
    assert {(s["group"], s["shift"] < 0) for s in biased["shifts"]} >= {("north", True)}
    # nothing earlier to compare with: measured as no shift, said so
    assert group_representation(before.iloc[:0], before, groups)["max_shift"] == 0.0


def test_group_representation_counts_persons_without_the_attribute_in_no_group():
    """New persons of an incremental run may have no CRM/sensitive row yet (NA group): they belong
    to no group of that attribute instead of failing the pass."""
    import pandas as pd

    from monitoring.checks import group_representation

    groups = pd.DataFrame({"region": pd.array(["north" if i % 2 else "south" for i in range(60)], dtype="string")}, index=[f"P{i}" for i in range(60)])
    before = pd.DataFrame({"source": "events", "person_id": [f"P{i % 60}" for i in range(600)]})
    now = pd.DataFrame({"source": "events", "person_id": [f"P{i % 70}" for i in range(700)]})  # P60-P69: no region
    out = group_representation(before, now, groups)
    assert out["cells"] == 2
    shares = {s["group"]: s for s in group_representation(before, now, groups, z_alert=0.0)["shifts"]}
    assert shares["north"]["share_now"] == shares["south"]["share_now"] == round(300 / 700, 4)
