"""Small builders shared by the tests (no fixtures that download or start services)."""

from __future__ import annotations

from pathlib import Path

TICKETS_HEADER = "ticket_id,email,subject,body,created_at\n"


def write_tickets_csv(path: Path, rows: list[str], header: str = TICKETS_HEADER) -> Path:
    path.write_bytes((header + "".join(r if r.endswith("\n") else r + "\n" for r in rows)).encode("utf-8"))
    return path


def corrupt_rows() -> list[bytes]:
    """Ticket rows that must each be quarantined, with the reason they should carry."""
    return [
        b"BAD-1,ann@example.com,,My export fails,not-a-date\n",  # wrong type: timestamp
        b"BAD-2,,,No identifier at all,2026-01-02T10:00:00Z\n",  # missing identifier
        b"BAD-3,bob@example.com,,From the future,2999-01-01T00:00:00Z\n",  # future timestamp
        b"BAD-4,carl-at-example.com,,Malformed email,2026-01-02T10:00:00Z\n",  # malformed identifier
        b"BAD-5,dee@example.com,,Bytes \xff\xfe broken,2026-01-02T10:00:00Z\n",  # invalid UTF-8
        b"BAD-6,eve@example.com,,Too many,fields,here,2026-01-02\n",  # extra fields
        b"BAD-7,fay@example.com,,Truncated",  # truncated last line (no timestamp, no newline)
    ]


CORRUPT_REASONS = {
    "BAD-1": "is not a date-time",
    "BAD-2": "no identifier",
    "BAD-3": "before 1970 or in the future",
    "BAD-4": "is not an e-mail address",
    "BAD-5": "not valid UTF-8",
    "BAD-6": "malformed line",
    "BAD-7": "malformed line",
}


def lake_records(rows: list[dict], identifiers=("customer_id", "email", "phone", "device_id")):
    """Identity-stage input from dicts: missing identifier columns empty, lineage columns filled."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    for col in identifiers:
        if col not in frame:
            frame[col] = None
    frame["_batch_id"], frame["_row_hash"] = "b", "h"
    frame["_row_number"] = range(1, len(frame) + 1)
    return frame


def assignment_rows(ids: list[str], version: int, seed: int, at, event_at=None):
    """Random persona assignments for `ids` as the persona_assignment view stores them (unicode
    names and the unassigned persona -1 included), stamped `event_at` (default `at`)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    persona = rng.integers(-1, 5, len(ids))
    names = np.array(["Unassigned", "Power users", "Churn risks", "Café regulars ☕", "Quiet ones", "Trialists"], dtype=object)
    return pd.DataFrame(
        {
            "person_id": ids,
            "persona_id": persona,
            "persona_name": names[persona + 1],
            "confidence": rng.random(len(ids)),
            "model_version": version,
            "event_timestamp": at if event_at is None else event_at,
            "created": at,
        }
    )


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc, timeout_s: float, request_timeout_s: float, what: str, output=lambda: "") -> None:
    """Poll `url` until it answers 200; fail the test (naming `what` and the last of `output()`)
    when `proc` exits or `timeout_s` passes, killing `proc` if it still runs."""
    import time

    import httpx
    import pytest

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=request_timeout_s).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            exited = proc.poll() is not None
            proc.kill()
            pytest.fail(f"{what} {'exited' if exited else f'did not answer {url} within {timeout_s:.0f} s'}: {output()[-2000:]}")
        time.sleep(0.5)


def run_cli(monkeypatch, capsys, *args: str, home=None) -> tuple[int, str, str]:
    """`personas ARGS` through the console entry (its one-line error mapping) in this process:
    (exit code, stdout, stderr). `home` sets PERSONAS_HOME for the call."""
    import sys

    from personaops import cli

    if home is not None:
        monkeypatch.setenv("PERSONAS_HOME", str(home))
    monkeypatch.setattr(sys, "argv", ["personas", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def production_assignment_store(home, first_rows):
    """(cfg, ws, store): a production-profile workspace at `home` (the services' PERSONAS_* variables
    must be set) with only the persona_assignment view applied, its offline table holding `first_rows`."""
    from personaops.config import load_config
    from personaops.feature_store import ASSIGNMENT_VIEW, feature_store, repo_objects, write_table
    from personaops.workspace import Workspace

    cfg = load_config(environ={"PERSONAS_PROFILE": "production"})
    cfg.home = home
    ws = Workspace(cfg.home)
    write_table(ws, ASSIGNMENT_VIEW, first_rows)
    store = feature_store(ws, cfg)
    wanted = {"person", "persona_assignment_source", ASSIGNMENT_VIEW}
    store.apply([o for o in repo_objects(cfg.feature_repo) if o.name in wanted])
    return cfg, ws, store
