import hashlib
from pathlib import Path

import pandas as pd
import pytest

import numpy as np

from personaops.generate import CHURNED_LEAVE_WEIGHT, DEFAULT_JOIN_RATE, PERSONAS, _leave_periods, generate
from personaops.sources import load_sources


def test_same_seed_same_data(tmp_path):
    generate(120, 3, tmp_path / "a")
    generate(120, 3, tmp_path / "b")
    for name in ("crm.csv", "tickets.csv", "surveys.csv", "campaigns.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert pd.read_parquet(tmp_path / "a" / "events.parquet").equals(pd.read_parquet(tmp_path / "b" / "events.parquet"))


def test_truth_covers_every_record_and_sources_file_loads(tmp_path):
    counts = generate(150, 5, tmp_path)
    records = pd.read_parquet(tmp_path / "truth" / "records.parquet")
    persons = pd.read_parquet(tmp_path / "truth" / "persons.parquet")
    assert list(records.columns) == ["source", "source_key", "true_person"]
    assert {"true_person", "true_persona", "churned"} <= set(persons.columns)
    assert len(persons) == 150 and set(persons["true_persona"]) <= {p.name for p in PERSONAS}
    for source, n in counts.items():
        if source != "persons":
            assert (records["source"] == source).sum() == n
    specs = load_sources(tmp_path / "sources.yaml")
    assert {s.kind for s in specs} == {"crm", "events", "tickets", "surveys", "campaigns"}


def test_later_period_keeps_the_population(tmp_path):
    generate(100, 9, tmp_path)
    generate(100, 9, tmp_path, period=1, drift="mix")
    p0 = pd.read_parquet(tmp_path / "truth" / "persons.parquet")
    p1 = pd.read_parquet(tmp_path / "truth" / "persons_p1.parquet")
    assert list(p0["true_person"]) == list(p1["true_person"])[: len(p0)]  # then the people who joined
    p1 = p1.iloc[: len(p0)]
    # the planted mix drift moves casual browsers to deal seekers only
    moved = p0["true_persona"] != p1["true_persona"]
    assert set(p0.loc[moved, "true_persona"]) <= {"casual_browser"}
    assert set(p1.loc[moved, "true_persona"]) <= {"deal_seeker"}
    assert (tmp_path / "sources_p1.yaml").is_file()


# sha256 over every file `generate(60, seed, out)` writes but sources.yaml (absolute paths), Parquet
# files as their CSV text (their bytes carry the pyarrow version), recorded before population
# turnover was added: period 0's output, which tests and planted truths depend on, must not move.
FROZEN_PERIOD0 = {
    7: "001d14b679962981e3a8026912273a48f7e307e1113a9fb628f8cb588688a36f",
    2: "0884eec20ba0cb091cc34804418566550a86bb5507de6744f79db4da5d211052",
}


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "sources.yaml"):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(pd.read_parquet(f).to_csv(index=False).encode() if f.suffix == ".parquet" else f.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("seed", sorted(FROZEN_PERIOD0))
def test_default_period_0_output_is_unchanged(tmp_path, seed):
    counts = generate(60, seed, tmp_path)
    assert _digest(tmp_path) == FROZEN_PERIOD0[seed]
    assert counts["persons"] == 60 and "joined" not in counts


def _active(folder: Path, period: int) -> set[str]:
    records = pd.read_parquet(folder / "truth" / f"records_p{period}.parquet")
    return set(records.loc[records["source"] != "crm", "true_person"])


def test_later_periods_have_joiners_with_new_ids_and_silent_leavers(tmp_path):
    users = 400
    counts = {k: generate(users, 5, tmp_path, period=k) for k in (1, 2)}
    per_period = round(DEFAULT_JOIN_RATE * users)
    p1 = pd.read_parquet(tmp_path / "truth" / "persons_p1.parquet")
    joiners = p1[p1["joined_period"] == 1]
    assert list(joiners["true_person"]) == [f"T{i:06d}" for i in range(users, users + per_period)]
    assert (p1["joined_period"].iloc[:users] == 0).all()
    crm = pd.read_csv(tmp_path / "crm_p1.csv", dtype=str)
    assert set(f"C{t[1:]}" for t in joiners["true_person"]) <= set(crm["customer_id"])  # new CRM rows
    assert crm["customer_id"].is_unique and len(crm) == users + per_period
    assert len(set(joiners["true_person"]) & _active(tmp_path, 1)) >= per_period // 2  # and their activity
    leavers = p1[p1["left_period"] == 1]
    assert 0 < len(leavers) and not set(leavers["true_person"]) & _active(tmp_path, 1)  # silent: no rows but CRM
    assert counts[1]["persons"] == len(p1) - len(leavers) and counts[1]["left"] == len(leavers)
    # the next period: the same joiners and leavers, and more of both
    p2 = pd.read_parquet(tmp_path / "truth" / "persons_p2.parquet").set_index("true_person")
    assert (p2.loc[p1["true_person"], "joined_period"].to_numpy() == p1["joined_period"].to_numpy()).all()
    assert (p2.loc[leavers["true_person"], "left_period"] == 1).all() and not set(leavers["true_person"]) & _active(tmp_path, 2)
    assert (p2["joined_period"] == 2).sum() == per_period and (p2["left_period"] == 2).sum() > 0
    assert counts[2]["joined"] == 2 * per_period


def test_grow_adds_new_people_and_keeps_every_base_row(tmp_path):
    generate(300, 7, tmp_path / "base")
    counts = generate(300, 7, tmp_path / "grow", join_rate=0.05, leave_rate=0)
    assert counts["persons"] == 315 and counts["joined"] == 15 and counts["left"] == 0
    records = pd.read_parquet(tmp_path / "grow" / "truth" / "records.parquet")
    new_people = {f"T{i:06d}" for i in range(300, 315)}
    for name, key in [("crm.csv", "customer_id"), ("tickets.csv", "ticket_id"), ("surveys.csv", "response_id"), ("campaigns.csv", "exposure_id")]:
        base, grow = (tmp_path / "base" / name).read_bytes(), (tmp_path / "grow" / name).read_bytes()
        assert grow.startswith(base)  # every base row, byte for byte, in the same order
        added = pd.read_csv(tmp_path / "grow" / name, dtype=str)[key].iloc[len(pd.read_csv(tmp_path / "base" / name, dtype=str)) :]
        owners = records[records["source"] == name.split(".")[0]].set_index("source_key")["true_person"]
        assert set(owners.loc[added]) <= new_people
    base, grow = pd.read_parquet(tmp_path / "base" / "events.parquet"), pd.read_parquet(tmp_path / "grow" / "events.parquet")
    assert grow.iloc[: len(base)].equals(base)
    assert 0.02 < len(grow) / len(base) - 1 < 0.10  # about the new people's share of rows


def test_people_who_churn_leave_more_often_at_the_stated_average_rate():
    rng = np.random.default_rng(0)
    churned = rng.random(200_000) < 0.35
    mean_weight = float(np.where(churned, CHURNED_LEAVE_WEIGHT, 1.0).mean())
    left = _leave_periods(rng.random(200_000), np.zeros(200_000, dtype=np.int64), churned, 0.02, mean_weight)
    assert left.min() >= 1  # nobody leaves in the period they joined
    assert abs((left == 1).mean() - 0.02) < 0.002  # the average per-period share
    ratio = (left[churned] == 1).mean() / (left[~churned] == 1).mean()
    assert abs(ratio - CHURNED_LEAVE_WEIGHT) < 0.5
    assert abs((left[~churned] == 2).mean() / (left[~churned] == 1).mean() - (1 - 0.02 / mean_weight)) < 0.1  # geometric
    never = _leave_periods(rng.random(10), np.zeros(10, dtype=np.int64), np.ones(10, bool), 0.0, 1.0)
    assert (never > 10**9).all()


def test_turnover_rates_outside_0_1_are_refused(tmp_path):
    with pytest.raises(ValueError, match="between 0 and 1"):
        generate(50, 1, tmp_path, period=1, join_rate=1.5)
