"""Progress of long stages, shown by whoever is listening (the CLI's rich display; nobody in tests).

Stages call `stage_started` / `stage_progress` / `stage_finished`; the CLI installs a listener
with `listen`. The default listener ignores everything.
"""

from __future__ import annotations

from typing import Protocol


class Listener(Protocol):
    def started(self, stage: str, description: str) -> None: ...
    def progress(self, stage: str, done: int, total: int) -> None: ...
    def finished(self, stage: str, summary: str) -> None: ...


class _Silent:
    def started(self, stage: str, description: str) -> None:
        pass

    def progress(self, stage: str, done: int, total: int) -> None:
        pass

    def finished(self, stage: str, summary: str) -> None:
        pass


_listener: Listener = _Silent()


def listen(listener: Listener | None) -> None:
    global _listener
    _listener = listener or _Silent()


def stage_started(stage: str, description: str) -> None:
    _listener.started(stage, description)


def stage_progress(stage: str, done: int, total: int) -> None:
    _listener.progress(stage, done, total)


def stage_finished(stage: str, summary: str) -> None:
    _listener.finished(stage, summary)
