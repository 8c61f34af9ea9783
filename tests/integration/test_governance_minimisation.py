"""Data minimisation (docs/governance.md "Data minimisation"): after a real pipeline run no raw
identifier of the lake (email, phone, name) is anywhere outside the lake, the quarantine and the
identity stage — feature tables, the Feast online store, MLflow's database and artifacts, reports,
graph and insight tables, the catalogue, run snapshots, caches, the audit log — and the sensitive
attributes are held only by the bias-audit table. Planted leaks in each file format are found."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys

import pandas as pd
import pytest

from personaops import minimisation
from personaops.workspace import Workspace

pytestmark = pytest.mark.integration


def test_the_pipeline_keeps_raw_identifiers_and_sensitive_attributes_where_they_belong(pipeline):
    home, record = pipeline
    ws = Workspace(home)
    result = minimisation.check(ws)
    assert result["identifier_findings"] == [] and result["sensitive_findings"] == [] and result["ok"]
    counts = result["identifiers_from_lake"]
    assert counts["emails"] > 1000 and counts["phones"] > 1000 and counts["names"] > 500
    assert result["sensitive_attributes"] == ["age_band", "gender"]
    scanned = {"features", "feast", "mlflow", "reports", "runs", "evidently", "texts", "audit"}
    present = {p.relative_to(home).parts[0] for p in home.rglob("*") if p.is_file()}
    assert scanned <= present  # the stores the check must cover exist in this workspace
    assert result["files_scanned"] > 50 and result["sensitive_checked"]["online_tables"] >= 3
    assert result["sensitive_checked"]["model_input_lists"] >= 1
    # the bias audit does hold them (what the check allows is really there)
    assert {"age_band", "gender"} <= set(pd.read_parquet(home / "audit" / "person_sensitive.parquet").columns)


def test_planted_leaks_are_found_in_every_format(pipeline, tmp_path, monkeypatch, capsys):
    original, _ = pipeline
    ws = Workspace(tmp_path)
    shutil.copytree(original / "lake" / "crm", ws.lake / "crm")
    crm = pd.read_parquet(next((ws.lake / "crm").glob("batch=*/part-0.parquet")))
    person = crm.dropna(subset=["email", "phone", "name"]).iloc[0]
    digits = minimisation.phone_digits(person["phone"])
    assert minimisation.check(ws)["ok"]  # nothing but the lake yet

    (ws.features).mkdir(parents=True)
    pd.DataFrame({"person_id": ["P1"], "note": [f"write to {person['email'].upper()} please"]}).to_parquet(ws.features / "notes.parquet")
    pd.DataFrame({"person_id": ["P1"], "gender": ["female"]}).to_parquet(ws.features / "person_extra.parquet")
    ws.feast.mkdir(parents=True)
    conn = sqlite3.connect(ws.feast / "online_store.db")
    conn.execute("CREATE TABLE demo_view (entity_key BLOB, feature_name TEXT, value BLOB)")
    conn.execute("INSERT INTO demo_view VALUES (?, ?, ?)", (b"\x02P1", "cat__age_band=25-34", b"\x12\x0c" + person["name"].encode()))
    conn.commit()
    conn.close()
    (ws.reports / "r1").mkdir(parents=True)
    (ws.reports / "r1" / "summary.json").write_text(json.dumps({"contact": f"({digits[:3]}) {digits[3:6]}-{digits[6:]}", "score": 0.5}))
    result = minimisation.check(ws)
    found = {(f["path"], f["kind"]) for f in result["identifier_findings"]}
    assert {("features/notes.parquet", "email"), ("feast/online_store.db", "name"), ("reports/r1/summary.json", "phone")} <= found
    assert {path for path, _ in found} == {"features/notes.parquet", "feast/online_store.db", "reports/r1/summary.json"}  # (the email spells the name too)
    sensitive = {(f["kind"], f["attribute"]) for f in result["sensitive_findings"]}
    assert sensitive == {("sensitive_column", "gender"), ("sensitive_online_feature", "age_band")} and not result["ok"]
    assert person["email"] not in json.dumps(result) and person["name"] not in json.dumps(result)  # kinds and places, never values

    from personaops import cli

    monkeypatch.setenv("PERSONAS_HOME", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["personas", "audit", "minimisation"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    err = capsys.readouterr().err
    assert exited.value.code == 1 and "Data minimisation fails" in err and "features/notes.parquet" in err and "Traceback" not in err
