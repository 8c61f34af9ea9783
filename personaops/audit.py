"""The tamper-evident audit log: an append-only hash chain of JSON lines.

Every entry carries its sequence number, the hash of the entry before it and its own hash
(SHA-256 over the canonical JSON of everything else; an HMAC-SHA-256 when `PERSONAS_AUDIT_KEY` is
set, so that someone who can write the file but does not hold the key cannot re-chain it). The
newest sequence number and hash are also kept in a small head file beside the log, so cutting
entries off the end is detected as well as editing, deleting, inserting or reordering them.

Appends hold an exclusive `flock` on the log, so the pipeline, the API and the CLI can write to one
workspace at the same time without breaking the chain.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
KEY_ENV = "PERSONAS_AUDIT_KEY"


def _canonical(entry: dict) -> bytes:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False).encode("utf-8")


def entry_hash(entry: dict, key: bytes | None = None) -> str:
    data = _canonical(entry)
    if key:
        return hmac.new(key, data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


def _key() -> bytes | None:
    value = os.environ.get(KEY_ENV)
    return value.encode("utf-8") if value else None


def head_path(log: Path) -> Path:
    return log.with_name(log.name + ".head")


def _last_entry(fh) -> dict | None:
    """The last complete entry of an open log (reads backwards from the end)."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    if size == 0:
        return None
    block = min(size, 65536)
    while True:
        fh.seek(size - block)
        tail = fh.read(block)
        lines = [line for line in tail.splitlines() if line.strip()]
        if lines and (block == size or len(lines) > 1):
            try:
                return json.loads(lines[-1])
            except json.JSONDecodeError:  # a torn last line: chain on from the last whole entry
                for line in reversed(lines[:-1]):
                    try:
                        return json.loads(line)
                    except json.JSONDecodeError:
                        continue
                if block == size:
                    return None
        if block == size:
            return None
        block = min(size, block * 4)


def append(log: Path, event: str, **details: Any) -> dict:
    """Append one event to the chain and return the entry as written."""
    log.parent.mkdir(parents=True, exist_ok=True)
    key = _key()
    with log.open("a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            last = _last_entry(fh)
            entry = {
                "seq": (last.get("seq", -1) + 1) if last else 0,
                "at": datetime.now(timezone.utc).isoformat(),
                "event": event,
                **{k: v for k, v in details.items() if k not in ("seq", "prev", "hash")},
                "prev": (last.get("hash") or GENESIS) if last else GENESIS,
            }
            entry = json.loads(json.dumps(entry, default=str))  # what is hashed is what is stored
            entry["hash"] = entry_hash(entry, key)
            torn = False
            if fh.seek(0, os.SEEK_END) > 0:
                fh.seek(-1, os.SEEK_END)
                torn = fh.read(1) != b"\n"
            fh.write((("\n" if torn else "") + json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
            tmp = head_path(log).with_suffix(".tmp")
            tmp.write_text(json.dumps({"seq": entry["seq"], "hash": entry["hash"]}) + "\n", encoding="utf-8")
            os.replace(tmp, head_path(log))
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return entry


@dataclass
class Verdict:
    ok: bool
    entries: int
    problems: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "entries": self.entries, "problems": self.problems}


def verify(log: Path) -> Verdict:
    """Check the whole chain; every problem names its line and what is wrong with it."""
    if not log.exists():
        return Verdict(ok=not head_path(log).exists(), entries=0,
                       problems=[] if not head_path(log).exists() else [{"line": 0, "problem": "the audit log is missing but its head file exists"}])
    key = _key()
    problems: list[dict] = []
    prev_hash, expected_seq, count = GENESIS, 0, 0
    last: dict | None = None
    for lineno, raw in enumerate(log.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
        except json.JSONDecodeError:
            problems.append({"line": lineno, "problem": "not valid JSON"})
            continue
        count += 1
        if "hash" not in entry:
            problems.append({"line": lineno, "problem": "entry has no hash (written outside the chain)"})
            continue
        if not hmac.compare_digest(entry_hash(entry, key).encode(), str(entry["hash"]).encode()):  # an HMAC when keyed: constant time
            problems.append({"line": lineno, "problem": "content does not match its hash (edited)"})
        if entry.get("prev") != prev_hash:
            problems.append({"line": lineno, "problem": "does not follow the entry before it (deleted, inserted or reordered)"})
        if entry.get("seq") != expected_seq:
            problems.append({"line": lineno, "problem": f"sequence number {entry.get('seq')} where {expected_seq} was expected"})
        prev_hash = entry["hash"]
        expected_seq = (entry.get("seq") if isinstance(entry.get("seq"), int) else expected_seq) + 1
        last = entry
    head = head_path(log)
    if head.exists():
        try:
            recorded = json.loads(head.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            recorded = None
        if not recorded or last is None or recorded.get("hash") != last.get("hash") or recorded.get("seq") != last.get("seq"):
            problems.append({"line": count, "problem": "the log does not end where its head file says (entries cut off the end or head replaced)"})
    elif count:
        problems.append({"line": 0, "problem": "the head file is missing"})
    return Verdict(ok=not problems, entries=count, problems=problems)


def read(log: Path, event: str | None = None) -> list[dict]:
    if not log.exists():
        return []
    out = []
    for raw in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if raw.strip():
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if event is None or entry.get("event") == event:
                out.append(entry)
    return out
