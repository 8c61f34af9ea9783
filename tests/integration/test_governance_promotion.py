"""Held promotions (docs/governance.md "Held promotions") with the real MLflow registry and Feast
online store, on a copy of the session pipeline's workspace: the pipeline holds a candidate that
moves too many persons instead of promoting it; `personas promotion approve` resumes it (alias
moved, assignments published online, audited); a second held candidate is rejected (tagged, never
champion later, audited). Also the gate's review verdicts on plain metrics."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from models import promotion, registry
from models.promotion import REVIEW, evaluate_gate, policy_checks, verdict
from monitoring.policy import load_policy
from personaops import audit
from personaops.config import ModelConfig, load_config
from personaops.feature_store import read_persona
from personaops.workspace import Workspace

from tests.helpers import run_cli

pytestmark = pytest.mark.integration
NAME = "persona-model"


def test_gate_verdicts_promote_review_block():
    cfg = ModelConfig(bias_tolerance=0.05, bias_review_increase=0.02, review_moved_share=0.25)
    champion = {"silhouette": 0.3, "stability": 0.95, "smallest_persona_share": 0.1, "bias_max_dp_difference": 0.10}
    assert verdict(evaluate_gate(dict(champion), champion, cfg, moved_share=0.10)) == "promote"
    marginal = evaluate_gate(dict(champion, bias_max_dp_difference=0.13), champion, cfg)  # +0.03: within tolerance, above the review line
    assert verdict(marginal) == REVIEW and [c.name for c in marginal if not c.passed] == ["bias_increase_vs_champion"]
    assert verdict(evaluate_gate(dict(champion, bias_max_dp_difference=0.30), champion, cfg)) == "block"  # over tolerance: blocked, not reviewed
    moved = evaluate_gate(dict(champion), champion, cfg, moved_share=0.40)
    assert verdict(moved) == REVIEW and "moved_share_vs_champion 0.400 > 0.250 (review)" in map(str, moved)
    assert verdict(evaluate_gate(dict(champion, silhouette=0.1), champion, cfg, moved_share=0.40)) == "block"  # a failed floor wins
    # the monitoring policy's bias rule (increase above 0.10 -> review) on the candidate
    fired = policy_checks(dict(champion, bias_max_dp_difference=0.25), champion, load_policy())
    assert [c.name for c in fired] == ["policy:bias_increase"] and verdict(fired) == REVIEW
    assert policy_checks(dict(champion, bias_max_dp_difference=0.12), champion, load_policy()) == []


def _cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    return run_cli(monkeypatch, capsys, *args)


def _train_candidate(monkeypatch, home, k: int, run_id: str) -> dict:
    """A real training of the flow's train task with a fixed k (a different k: many persons move)."""
    from flows.build_personas import train

    monkeypatch.setenv("PERSONAS_MODEL__K_MIN", str(k))
    monkeypatch.setenv("PERSONAS_MODEL__K_MAX", str(k))
    return train.fn(str(home), run_id, "all-MiniLM-L6-v2")


def test_a_held_promotion_resumes_on_approval_and_is_discarded_on_rejection(pipeline, tmp_path, monkeypatch, capsys):
    original, _ = pipeline
    home = tmp_path / "ws"
    shutil.copytree(original, home)
    monkeypatch.setenv("PERSONAS_HOME", str(home))
    monkeypatch.setenv("PERSONAS_API_TOKENS", "m-tok:ml-engineer")
    monkeypatch.setenv("PERSONAS_TOKEN", "m-tok")
    monkeypatch.setenv("USER", "mel")
    # the gate's floors are relaxed so that only the review check decides; any candidate moving over 2% waits
    monkeypatch.setenv("PERSONAS_MODEL__PROMOTION_TOLERANCE", "1")
    monkeypatch.setenv("PERSONAS_MODEL__STABILITY_FLOOR", "0")
    monkeypatch.setenv("PERSONAS_MODEL__REVIEW_MOVED_SHARE", "0.02")
    cfg = load_config()
    ws = Workspace.from_config(cfg)
    champion = registry.alias_version(ws, NAME, registry.CHAMPION)
    champion_k = int(registry.run_metrics(ws, NAME, champion)["k"])
    people = sorted(pd.read_parquet(ws.feature_table("persona_assignment"))["person_id"].unique())[:50]
    assert set(read_persona(ws, cfg, people)["model_version"]) == {champion}

    # --- the pipeline trains a candidate and holds it: nothing moves, nothing is published -----
    trained = _train_candidate(monkeypatch, home, 3 if champion_k >= 5 else champion_k + 3, "held-1")
    assert trained["promotion"]["status"] == "held" and trained["aliases"] == ["challenger"]
    assert any(c["name"] == "moved_share_vs_champion" and not c["passed"] for c in trained["gate"])
    first = trained["version"]
    held = promotion.pending(ws)
    assert [(p["id"], p["version"], p["champion"], p["requested_by"]) for p in held] == [(trained["promotion"]["id"], first, champion, "pipeline")]
    assert registry.alias_version(ws, NAME, registry.CHAMPION) == champion
    assert set(read_persona(ws, cfg, people)["model_version"]) == {champion}
    assert audit.read(ws.audit_log, "promotion_held")[-1]["outcome"] == "held"
    code, out, _ = _cli(monkeypatch, capsys, "promotion", "list", "--json")
    assert code == 0 and f'"version": {first}' in out

    # --- approval: champion moves, assignments are published online, the decision is audited ---
    code, out, err = _cli(monkeypatch, capsys, "promotion", "approve", held[0]["id"], "--reason", "reviewed the moved persons")
    assert code == 0, err
    assert registry.alias_version(ws, NAME, registry.CHAMPION) == first
    assert set(read_persona(ws, cfg, people)["model_version"]) == {first}
    approved = audit.read(ws.audit_log, "promotion_approved")[-1]
    assert (approved["promotion"], approved["version"], approved["actor"], approved["outcome"]) == (held[0]["id"], first, "mel (ml-engineer)", "approved")
    assert approved["published"] > 0 and promotion.pending(ws) == []
    moved = registry.alias_history(ws, NAME)[-1]
    assert (moved["version"], moved["previous"], moved["actor"]) == (first, champion, "mel (ml-engineer)")

    # --- a second candidate held, then rejected: tagged, never champion, audited ----------------
    used = {champion_k, int(registry.run_metrics(ws, NAME, first)["k"])}
    trained = _train_candidate(monkeypatch, home, next(k for k in (3, 4, 5, 6) if k not in used), "held-2")
    second = trained["version"]
    assert trained["promotion"]["status"] == "held" and second != first
    pid = trained["promotion"]["id"]
    code, out, err = _cli(monkeypatch, capsys, "promotion", "reject", pid, "--reason", "too much churn between personas")
    assert code == 0, err
    assert promotion.is_rejected(ws, NAME, second)
    assert registry.alias_version(ws, NAME, registry.CHAMPION) == first and registry.alias_version(ws, NAME, registry.CHALLENGER) is None
    assert set(read_persona(ws, cfg, people)["model_version"]) == {first}
    rejected = audit.read(ws.audit_log, "promotion_rejected")[-1]
    assert (rejected["promotion"], rejected["version"], rejected["outcome"]) == (pid, second, "rejected")
    code, _, err = _cli(monkeypatch, capsys, "models", "promote", str(second), "--force", "--reason", "try anyway")
    assert code == 1 and "rejected in review" in err and err.count("\n") == 1
    code, _, err = _cli(monkeypatch, capsys, "promotion", "approve", pid, "--reason", "changed my mind")
    assert code == 1 and "already rejected" in err
    assert registry.alias_version(ws, NAME, registry.CHAMPION) == first
    assert [p["status"] for p in promotion.promotions(ws)] == ["approved", "rejected"]
    assert audit.verify(ws.audit_log).ok
