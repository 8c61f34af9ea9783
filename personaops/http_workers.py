"""`personas serve --workers N`: uvicorn's worker processes with connections balanced across them.

uvicorn's workers share one listening socket, and uvloop accepts every pending connection at once,
so the first worker to wake takes a whole batch: of a load generator's 20 keep-alive connections,
20/0 and 19/1 splits were usual (docs/serving.md). A burst of requests on them then queues on one
core while the other idles, and the p99 under bursts doubles.

Here each worker accepts on the shared socket itself, one connection per readiness, and a worker
holding more open connections than a live peer leaves a new connection to that peer for
BALANCE_DEFER_S (and takes it after that, so a busy or stuck peer never delays a connection longer).
Open-connection counts are shared through a small memory-mapped file of (pid, count) slots, one per
worker. Everything else (lifespan, protocols, health pings, restarts, signals, graceful shutdown) is
uvicorn's own: `BalancedServer` only replaces how a worker accepts.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import mmap
import os
import socket
import struct
import tempfile

import uvicorn
from uvicorn.supervisors import multiprocess

from personaops.workspace import pid_alive

SLOTS_ENV = "_PERSONAS_SERVE_SLOTS"  # the slots file, set by run_workers for its worker processes
BALANCE_DEFER_S = 0.002
_SLOTS, _SLOT = 64, 8  # slots of (pid uint32, open connections uint32)
logger = logging.getLogger("uvicorn.error")


class ConnectionSlots:
    """This worker's slot in the shared (pid, open connections) file, and its peers' counts."""

    def __init__(self, path: str):
        self._fd = os.open(path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, _SLOTS * _SLOT)
        self.pid = os.getpid()
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # workers start together: claim slots one at a time
        try:
            free = [i for i, (pid, _) in enumerate(self.entries()) if pid in (0, self.pid) or not pid_alive(pid)]
            if not free:
                raise RuntimeError(f"more than {_SLOTS} server workers on one slots file")
            self.offset = free[0] * _SLOT
            struct.pack_into("<II", self._map, self.offset, self.pid, 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def entries(self) -> list[tuple[int, int]]:
        return list(struct.iter_unpack("<II", self._map))

    def publish(self, count: int) -> None:
        struct.pack_into("<I", self._map, self.offset + 4, count)

    def busier_than_a_peer(self, count: int) -> bool:
        """True when a live peer worker holds fewer open connections than `count`."""
        return any(pid not in (0, self.pid) and n < count and pid_alive(pid) for pid, n in self.entries())

    def release(self) -> None:
        struct.pack_into("<II", self._map, self.offset, 0, 0)
        self._map.close()
        os.close(self._fd)


class BalancedServer(uvicorn.Server):
    """A uvicorn worker that accepts on the shared socket itself, one connection at a time,
    deferring to a peer worker that holds fewer connections (module docstring)."""

    _slots: ConnectionSlots | None = None

    async def startup(self, sockets=None):
        path = os.environ.get(SLOTS_ENV)
        if not sockets or not path:
            return await super().startup(sockets=sockets)
        await super().startup(sockets=[])  # lifespan and state as uvicorn does, without its server
        if not self.started:
            return
        self._listen = sockets[0]
        self._listen.listen(self.config.backlog)  # what loop.create_server(sock=...) would do
        self._listen.setblocking(False)
        self._slots = ConnectionSlots(path)
        self._pending = 0
        self._connecting: set[asyncio.Task] = set()
        self._deferred = False
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._listen.fileno(), self._readable)
        self._refresh()

    def _open(self) -> int:
        return len(self.server_state.connections) + self._pending

    def _refresh(self) -> None:  # peers see closed connections within 0.1 s
        self._slots.publish(self._open())
        self._timer = self._loop.call_later(0.1, self._refresh)

    def _readable(self) -> None:
        count = self._open()
        self._slots.publish(count)
        if not self._deferred and self._slots.busier_than_a_peer(count):
            self._deferred = True  # the less busy peer takes it; this worker does after the wait if not
            self._loop.remove_reader(self._listen.fileno())
            self._loop.call_later(BALANCE_DEFER_S, self._after_defer)
            return
        self._accept()

    def _after_defer(self) -> None:
        if self._slots is None:  # shutting down
            return
        self._deferred = False
        if self._accept():
            self._loop.add_reader(self._listen.fileno(), self._readable)

    def _accept(self) -> bool:
        """Accept one connection; False when accepting pauses for a second (an error)."""
        try:
            conn, _ = self._listen.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return True  # a peer took it
        except OSError as exc:  # out of file descriptors, ...: pause a second, as asyncio's loop does
            logger.error("accept failed: %s", exc)
            self._loop.remove_reader(self._listen.fileno())
            self._loop.call_later(1.0, self._resume)
            return False
        conn.setblocking(False)
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pending += 1
        self._slots.publish(self._open())
        task = self._loop.create_task(self._connect(conn))
        self._connecting.add(task)  # a task nobody references may be collected before it runs
        task.add_done_callback(self._connecting.discard)
        return True

    def _resume(self) -> None:
        if self._slots is not None:
            self._loop.add_reader(self._listen.fileno(), self._readable)

    def _protocol(self):
        config = self.config
        return config.http_protocol_class(config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=self._loop)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._protocol, conn, ssl=self.config.ssl)
        except OSError:
            conn.close()  # the client went away before the connection was set up
        finally:
            self._pending -= 1

    async def shutdown(self, sockets=None):
        if self._slots is not None:  # stop accepting first, as uvicorn closes its servers
            self._loop.remove_reader(self._listen.fileno())
            self._timer.cancel()
            self._slots.release()
            self._slots = None
        return await super().shutdown(sockets=sockets)


class BalancedProcess(multiprocess.Process):
    """uvicorn's worker process, running a BalancedServer."""

    @property
    def server(self):
        if self._server is None:
            self._server = BalancedServer(config=self.config)
        return self._server


def run_workers(app: str, *, host: str, port: int, workers: int, balance: bool = True, **options) -> None:
    """uvicorn.run(app, host=..., port=..., workers=N, **options) for N >= 2 (`app` an import string
    or factory), each worker a BalancedServer unless `balance` is False (uvicorn's own accept)."""
    if workers < 2 or not balance:
        uvicorn.run(app, host=host, port=port, workers=workers, **options)
        return
    config = uvicorn.Config(app, host=host, port=port, workers=workers, **options)
    given = os.environ.get(SLOTS_ENV)  # a caller that watches the workers (live_workers) names the file
    with open(given, "w+b") if given else tempfile.NamedTemporaryFile(prefix="personas-serve-slots-") as slots:
        slots.truncate(_SLOTS * _SLOT)
        os.environ[SLOTS_ENV] = slots.name  # the spawned workers inherit it
        sock = config.bind_socket()
        # uvicorn's supervisor (health pings, restarts, signals) creates its workers by this name.
        saved, multiprocess.Process = multiprocess.Process, BalancedProcess
        try:
            multiprocess.Multiprocess(config, sockets=[sock]).run()
        except KeyboardInterrupt:
            pass
        finally:
            multiprocess.Process = saved
            if not given:
                os.environ.pop(SLOTS_ENV, None)


def live_workers(path: str) -> dict[int, int]:
    """pid -> open connections of the live workers accepting through the slots file at `path`
    (a worker registers once it listens): how a caller knows every worker is up."""
    with open(path, "rb") as fh:
        data = fh.read(_SLOTS * _SLOT)
    return {pid: n for pid, n in struct.iter_unpack("<II", data.ljust(_SLOTS * _SLOT, b"\0")) if pid and pid_alive(pid)}
