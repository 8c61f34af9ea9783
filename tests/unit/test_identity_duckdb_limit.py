"""The full Splink pass runs DuckDB with a memory limit and a spill directory of its own
(matching.DUCKDB_MEMORY_LIMIT, issue #9: the pass grew 2.4 -> 6.5 GiB at 300,000 people)."""

import gc
from pathlib import Path

from personaops import matching


def test_duckdb_api_has_the_memory_limit_and_removes_its_spill_directory(monkeypatch):
    monkeypatch.setattr(matching, "DUCKDB_MEMORY_LIMIT", "300MB")
    api = matching.database_api("duckdb")
    con = api._con
    limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    spill = Path(con.execute("SELECT current_setting('temp_directory')").fetchone()[0])
    assert limit == "286.1 MiB", limit  # DuckDB reports 300 MB in MiB
    assert spill.is_dir() and spill.name.startswith("personaops-duckdb-")
    del api, con
    gc.collect()
    assert not spill.exists()
