import pandas as pd

from personaops.generate import PERSONAS, generate
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
    assert list(p0["true_person"]) == list(p1["true_person"])
    # the planted mix drift moves casual browsers to deal seekers only
    moved = p0["true_persona"] != p1["true_persona"]
    assert set(p0.loc[moved, "true_persona"]) <= {"casual_browser"}
    assert set(p1.loc[moved, "true_persona"]) <= {"deal_seeker"}
    assert (tmp_path / "sources_p1.yaml").is_file()
