"""The audit log is a hash chain: every kind of tampering is caught by `verify`."""

import json

import pytest

from personaops import audit


def _log(tmp_path, n=5):
    log = tmp_path / "audit.jsonl"
    for i in range(n):
        audit.append(log, "model_alias_moved", version=i, reason=f"step {i}")
    return log


def _lines(log):
    return log.read_text(encoding="utf-8").splitlines()


def _write(log, lines):
    log.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_intact_chain_verifies(tmp_path):
    log = _log(tmp_path)
    verdict = audit.verify(log)
    assert verdict.ok and verdict.entries == 5 and verdict.problems == []
    entries = audit.read(log)
    assert [e["seq"] for e in entries] == [0, 1, 2, 3, 4]
    assert entries[0]["prev"] == audit.GENESIS and entries[1]["prev"] == entries[0]["hash"]


def _edit(lines):
    e = json.loads(lines[2]); e["reason"] = "nothing to see"; lines[2] = json.dumps(e)
    return lines


def _edit_and_rehash(lines):
    e = json.loads(lines[2]); e["reason"] = "forged"; e["hash"] = audit.entry_hash(e); lines[2] = json.dumps(e)
    return lines


def _delete(lines):
    return lines[:1] + lines[2:]


def _insert(lines):
    forged = {"seq": 2, "at": "2024-01-01T00:00:00+00:00", "event": "forged", "prev": json.loads(lines[1])["hash"]}
    forged["hash"] = audit.entry_hash(forged)
    return lines[:2] + [json.dumps(forged)] + lines[2:]


def _reorder(lines):
    lines[1], lines[2] = lines[2], lines[1]
    return lines


def _truncate(lines):
    return lines[:-2]


def _unchained(lines):
    return lines + [json.dumps({"at": "2024-01-01", "event": "sneaked in"})]


@pytest.mark.parametrize("tamper", [_edit, _edit_and_rehash, _delete, _insert, _reorder, _truncate, _unchained])
def test_each_kind_of_tampering_is_caught(tmp_path, tamper):
    log = _log(tmp_path)
    _write(log, tamper(_lines(log)))
    verdict = audit.verify(log)
    assert not verdict.ok
    assert all(p["problem"] for p in verdict.problems)


def test_missing_head_or_log_is_caught(tmp_path):
    log = _log(tmp_path)
    audit.head_path(log).unlink()
    assert not audit.verify(log).ok
    log2 = _log(tmp_path / "b")
    log2.unlink()
    assert not audit.verify(log2).ok


def test_keyed_chain_cannot_be_rechained_without_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv(audit.KEY_ENV, "s3cret")
    log = _log(tmp_path)
    assert audit.verify(log).ok
    # someone without the key edits an entry and recomputes every hash with plain SHA-256
    lines = _lines(log)
    prev = audit.GENESIS
    rewritten = []
    for raw in lines:
        e = json.loads(raw)
        if e["seq"] == 1:
            e["reason"] = "forged"
        e["prev"] = prev
        e["hash"] = audit.entry_hash(e)
        prev = e["hash"]
        rewritten.append(json.dumps(e))
    _write(log, rewritten)
    audit.head_path(log).write_text(json.dumps({"seq": 4, "hash": prev}))
    assert not audit.verify(log).ok


def test_appends_continue_after_a_torn_last_line(tmp_path):
    log = _log(tmp_path, 3)
    with log.open("a", encoding="utf-8") as fh:
        fh.write('{"seq": 3, "event": "half wri')  # a crash mid-write
    entry = audit.append(log, "after_crash")
    assert entry["seq"] == 3 and entry["prev"] == json.loads(_lines(log)[2])["hash"]
    assert audit.read(log)[-1]["event"] == "after_crash"  # not glued onto the torn line
    verdict = audit.verify(log)
    assert [p["problem"] for p in verdict.problems] == ["not valid JSON"]


def test_cli_verify_exit_codes(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from personaops.cli import app
    from personaops.workspace import Workspace

    monkeypatch.setenv("PERSONAS_HOME", str(tmp_path))
    ws = Workspace(tmp_path)
    for i in range(3):
        ws.audit("review_decision", pair_id=f"p{i}", decision="accept")
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify", "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["entries"] == 3
    lines = _lines(ws.audit_log)
    _write(ws.audit_log, _edit(lines + []) if len(lines) > 2 else lines)
    bad = runner.invoke(app, ["audit", "verify"])
    assert bad.exit_code == 1
    assert "tampered" in bad.output and "Traceback" not in bad.output
