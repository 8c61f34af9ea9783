"""Population turnover (people join and leave between generated periods) is not a data fault: the
missing-values check measures missing shares over the people with any activity, so silent
leavers and joiners without activity do not count, while a fault among active people still does."""

import numpy as np
import pandas as pd

from monitoring.checks import data_quality

COLUMNS = ["n_events", "days_since_last_event", "score_mean", "tenure_days", "plan__free"]
PROFILE = pd.DataFrame(columns=["person_id", "tenure_days", "plan", "event_timestamp", "created"])


def _people(n: int, start: int, silent: bool = False, no_recency: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {"n_events": 0 if silent else rng.integers(1, 50, n), "days_since_last_event": np.nan if silent else rng.uniform(0, 90, n),
         "score_mean": np.where(silent | (rng.random(n) < 0.5), np.nan, rng.uniform(0, 10, n)),
         "tenure_days": rng.uniform(30, 900, n), "plan__free": rng.integers(0, 2, n)},
        index=pd.Index([f"P{i:05d}" for i in range(start, start + n)], name="person_id"),
    )  # fmt: skip
    if no_recency:
        frame.loc[frame.index[: int(no_recency * n)], "days_since_last_event"] = np.nan
    return frame


def test_silent_people_are_turnover_not_missing_values():
    reference = _people(400, 0, seed=1)
    current = pd.concat([_people(300, 0, seed=2), _people(120, 300, silent=True)])  # 29% silent: left or no activity yet
    quality = data_quality(reference, current, COLUMNS, [], None, PROFILE)
    assert quality["max_missing_increase"] < 0.08  # only the sampling noise of score_mean
    assert quality["silent_share"] == {"reference": 0.0, "current": round(120 / 420, 4)}
    everyone = (current[COLUMNS].isna().mean() - reference[COLUMNS].isna().mean()).max()
    assert everyone > 0.20  # what the check said before: a review for normal turnover


def test_missing_values_among_active_people_still_count():
    reference = _people(400, 0, seed=1)
    current = pd.concat([_people(300, 0, no_recency=0.3, seed=2), _people(60, 300, silent=True)])
    quality = data_quality(reference, current, COLUMNS, [], None, PROFILE)
    assert 0.25 < quality["max_missing_increase"] < 0.35


def test_when_everyone_is_silent_the_check_measures_everyone():
    reference = _people(400, 0, seed=1)
    current = _people(400, 0, silent=True)
    quality = data_quality(reference, current, COLUMNS, [], None, PROFILE)
    assert quality["max_missing_increase"] > 0.9 and quality["silent_share"]["current"] == 1.0
