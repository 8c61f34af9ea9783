"""Replay after an erasure (docs/governance.md "Replay"): on a copy of the session pipeline's
workspace, erase one person, then `personas replay` the run: the erased person is reported as not
reproducible and every other person's assignment is reproduced bit for bit; a stored file changed
by anything but an erasure still stops the replay."""

from __future__ import annotations

import json
import shutil
import sys

import pandas as pd
import pytest

from personaops import erasure, lineage
from personaops.config import load_config
from personaops.errors import PipelineStateError
from personaops.workspace import Workspace

pytestmark = pytest.mark.integration


def test_replay_after_an_erasure_reports_the_erased_person_and_reproduces_everyone_else(pipeline, tmp_path, monkeypatch, capsys):
    original, record = pipeline
    home = tmp_path / "ws"
    shutil.copytree(original, home)
    monkeypatch.setenv("PERSONAS_HOME", str(home))
    cfg = load_config()
    ws = Workspace.from_config(cfg)
    run_id = record["run_id"]
    stored = ws.runs / run_id / "assignments.parquet"
    before = pd.read_parquet(stored)
    person = str(before.sort_values("person_id")["person_id"].iloc[len(before) // 2])

    done = erasure.erase(ws, cfg, person_id=person, reason="replay test")
    after = pd.read_parquet(stored)
    assert person not in set(after["person_id"]) and len(after) == len(before) - 1
    from personaops import cli

    monkeypatch.setattr(sys, "argv", ["personas", "replay", run_id, "--json"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code in (0, None)
    result = json.loads(capsys.readouterr().out)
    assert result["erased_persons"] == [person] and result["erasures"] == [done["erasure_id"]]
    assert result["persons_at_run"] == len(before) and result["persons"] == len(before) - 1
    assert result["reproduced"] and result["identical"] == result["persons"]
    assert result["persona_differences"] == 0 and result["confidence_differences"] == 0

    # anything else that changes a stored file is still caught
    tampered = after.copy()
    tampered.loc[0, "confidence"] = float(tampered.loc[0, "confidence"]) + 1e-12
    tampered.to_parquet(stored, index=False)
    with pytest.raises(PipelineStateError, match="changed after the run"):
        lineage.replay(cfg, ws, run_id)
