import pytest

from personaops.errors import SourceError
from personaops.sources import load_sources


def _write(tmp_path, text):
    path = tmp_path / "sources.yaml"
    path.write_text(text)
    return path


def test_paths_are_relative_to_the_sources_file(tmp_path):
    (tmp_path / "crm.csv").write_text("id,email\n1,a@b.co\n")
    specs = load_sources(_write(tmp_path, "sources:\n- name: crm\n  kind: crm\n  path: crm.csv\n  key: id\n  identifiers: {email: email}\n"))
    assert specs[0].path == (tmp_path / "crm.csv").resolve()
    assert specs[0].files() == [specs[0].path]


@pytest.mark.parametrize(
    "body, fragment",
    [
        ("- name: crm\n  kind: crm\n  path: x.csv\n  identifiers: {email: e}\n  colour: red\n", "unknown key 'colour'"),
        ("- name: ev\n  kind: events\n  path: x.csv\n  identifiers: {device_id: d}\n  timestamp: ts\n", "needs fields: event_type"),
        ("- name: crm\n  kind: cram\n  path: x.csv\n  identifiers: {email: e}\n", "source 'crm'"),
        ("- name: crm\n  kind: crm\n  path: x.csv\n  identifiers: {}\n", "at least one identifier"),
    ],
)
def test_bad_mappings_are_one_clear_error(tmp_path, body, fragment):
    path = _write(tmp_path, "sources:\n" + body)
    with pytest.raises(SourceError) as exc:
        load_sources(path)
    assert fragment in str(exc.value)
    assert str(path) in str(exc.value)


def test_missing_sources_file(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        load_sources(tmp_path / "absent.yaml")


def test_missing_data_file_names_source_and_path(tmp_path):
    specs = load_sources(_write(tmp_path, "sources:\n- name: crm\n  kind: crm\n  path: gone.csv\n  identifiers: {email: e}\n"))
    with pytest.raises(SourceError) as exc:
        specs[0].files()
    assert "'crm'" in str(exc.value) and "gone.csv" in str(exc.value)
