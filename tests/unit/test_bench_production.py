"""bench/production.py's watch over a pipeline process: it reads the record the child writes, and
stops a child whose resident set passes the limit, saying which stages finished and where it stood."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"

CHILD = r"""
import json, sys, time
def stage(name, event, **extra):
    print("STAGE " + json.dumps({"stage": name, "event": event, "t": time.time(), **extra}), file=sys.stderr, flush=True)
stage("ingest", "started"); time.sleep(0.6); stage("ingest", "finished", summary="12 rows in, 12 accepted, 0 quarantined")
stage("resolve", "started")
hold = bytearray(int(sys.argv[1]) * 2**20)  # resident once touched
for i in range(0, len(hold), 4096):
    hold[i] = 1
time.sleep(3)
stage("resolve", "finished", summary="done")
with open(sys.argv[3], "w") as out:
    json.dump({"ok": True, "mib": int(sys.argv[1])}, out)
print("some library's chatter on stdout")
"""


def _production():
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("production")
    finally:
        sys.path.remove(str(BENCH))


def test_the_watch_reads_the_written_record_and_keeps_the_stage_log(tmp_path):
    production = _production()
    record, wall, peak, watch = production._child(CHILD, ["20", "-", str(tmp_path / "r.json")], dict(os.environ), "a small child", None, tmp_path / "c.log",
                                                  tmp_path / "r.json")  # fmt: skip
    assert record == {"ok": True, "mib": 20}
    assert peak >= 20 and wall > 0.6
    assert [(e["stage"], e["event"]) for e in watch["stage_log"]] == [("ingest", "started"), ("ingest", "finished"), ("resolve", "started"), ("resolve", "finished")]
    assert production._rows_in(watch["stage_log"]) == 12
    assert "chatter" in (tmp_path / "c.stdout").read_text()


def test_the_watch_stops_a_child_past_the_limit_and_says_where(tmp_path):
    production = _production()
    record, _, peak, watch = production._child(CHILD, ["400", "-", str(tmp_path / "r.json")], dict(os.environ), "a big child", 200.0, None, tmp_path / "r.json")
    assert record is None and not (tmp_path / "r.json").exists()
    assert watch["in_stage"] == "resolve" and watch["killed"]["rss_mib"] > 200.0 and peak > 200.0
    assert [e["stage"] for e in watch["stage_log"] if e["event"] == "finished"] == ["ingest"]


def test_a_child_killed_from_outside_is_reported_with_the_stages_it_finished(tmp_path):
    """The kernel's OOM killer (SIGKILL) ended a 1M run in session 8: the figures of the stages it
    finished must survive, as they do when the watch stops a child."""
    production = _production()
    killed_by_kernel = CHILD.replace("time.sleep(3)", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    record, _, _, watch = production._child(killed_by_kernel, ["30", "-", str(tmp_path / "r.json")], dict(os.environ), "a child", None, None, tmp_path / "r.json")
    assert record is None and watch["exit_code"] == -9
    assert watch["in_stage"] == "resolve" and "signal 9" in watch["killed"]["by"]
    assert [e["stage"] for e in watch["stage_log"] if e["event"] == "finished"] == ["ingest"]
