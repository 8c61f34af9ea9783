"""Bounded retries for the production profile's services, and one-line errors when they stay down.

Redis, PostgreSQL (the Feast SQL registry, the MLflow backend) and the MLflow server can restart
or blip. Every call into them that PersonaOps makes itself is either retried here — a bounded
number of attempts with capped exponential backoff, then a `ServiceUnavailableError` that names
the service, where it is (host:port, never a password) and what to do — or, for calls made
inside MLflow's client, bounded by MLflow's own HTTP retry settings and translated into the same
one line by `service_failure` (the CLI's last resort before "internal error").

Knobs (environment): PERSONAS_SERVICE_ATTEMPTS (default 6) and PERSONAS_SERVICE_MAX_WAIT_S (the
longest pause between two attempts, default 8 s): with the defaults a service gets about 20 s to
come back before a run gives up.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, TypeVar
from urllib.parse import urlsplit

from personaops.errors import PersonaOpsError

T = TypeVar("T")
ATTEMPTS_ENV = "PERSONAS_SERVICE_ATTEMPTS"
MAX_WAIT_ENV = "PERSONAS_SERVICE_MAX_WAIT_S"


class ServiceUnavailableError(PersonaOpsError):
    """A service of the production profile did not answer after bounded retries."""


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` tries; the pause after try n is min(first_wait_s * 2**(n-1), max_wait_s) seconds."""

    attempts: int = 6
    first_wait_s: float = 0.5
    max_wait_s: float = 8.0

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> "RetryPolicy":
        environ = os.environ if environ is None else environ
        try:
            attempts = int(environ.get(ATTEMPTS_ENV, "") or cls.attempts)
            max_wait = float(environ.get(MAX_WAIT_ENV, "") or cls.max_wait_s)
        except ValueError:
            raise ServiceUnavailableError(f"{ATTEMPTS_ENV} / {MAX_WAIT_ENV} must be numbers; fix them in the environment.") from None
        return cls(attempts=max(1, attempts), max_wait_s=max(0.0, max_wait))

    def waits(self) -> list[float]:
        """The pauses between attempts (seconds), attempts - 1 of them."""
        return [min(self.first_wait_s * 2**i, self.max_wait_s) for i in range(self.attempts - 1)]


@dataclass
class RetryLog:
    """What the last `call_with_retries` did: attempts made and seconds spent (for reports and tests)."""

    attempts: int = 0
    seconds: float = 0.0
    last_error: str = ""


def where(url: str) -> str:
    """host:port of a service URL, without user or password (safe for messages and logs)."""
    parts = urlsplit(url if "://" in url else f"//{url}")
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


def call_with_retries(fn: Callable[[], T], service: str, action: str, retry_on: tuple[type[BaseException], ...], policy: RetryPolicy | None = None, log: RetryLog | None = None, sleep: Callable[[float], None] = time.sleep) -> T:
    """fn() until it returns, retrying on `retry_on` with the policy's pauses; then raise a
    ServiceUnavailableError: "<service> did not answer after N attempts over S s (<error>); <action>"."""
    policy = policy or RetryPolicy.from_environment()
    log = log if log is not None else RetryLog()
    started = time.monotonic()
    waits = policy.waits()
    for attempt in range(policy.attempts):
        log.attempts = attempt + 1
        try:
            result = fn()
            log.seconds = time.monotonic() - started
            return result
        except retry_on as exc:
            log.last_error = _short(exc)
            if attempt < len(waits):
                sleep(waits[attempt])
    log.seconds = time.monotonic() - started
    raise ServiceUnavailableError(f"{service} did not answer after {log.attempts} attempts over {log.seconds:.1f} s ({log.last_error}); {action}")


def _short(exc: BaseException) -> str:
    """The first line of an exception's message, without URLs' passwords, at most 160 characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return _redact(text)[:160]


def _redact(text: str) -> str:
    import re

    return re.sub(r"(\w+://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


# --- the production profile's services, checked before a run starts ----------------------------
START_HINT = "start it (`infra/services.sh up {name}`, or your own) or fix {var}, then run again"


def check_postgres(url: str, policy: RetryPolicy | None = None, log: RetryLog | None = None) -> None:
    """Connect to the Feast SQL registry's PostgreSQL database, with retries."""
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)

    def connect() -> None:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            conn.execute("SELECT 1")

    call_with_retries(connect, f"PostgreSQL (the Feast SQL registry) at {where(url)}", START_HINT.format(name="postgres", var="PERSONAS_FEAST_REGISTRY_URL") + ".", (psycopg.OperationalError,), policy, log)


def check_redis(connection_string: str, policy: RetryPolicy | None = None, log: RetryLog | None = None) -> None:
    """PING the Feast online store's Redis (Feast's `host:port,key=value` connection string)."""
    import redis

    from personaops.online_publish import no_client_retries, redis_client

    def ping() -> None:
        client = redis_client(connection_string, socket_connect_timeout=5, socket_timeout=5, **no_client_retries())
        try:
            client.ping()
        finally:
            client.close()

    host = connection_string.split(",", 1)[0]
    call_with_retries(ping, f"Redis (the online store) at {host}", START_HINT.format(name="redis", var="PERSONAS_REDIS_URL") + ".", redis_retryable(), policy, log)


def check_mlflow_server(uri: str, policy: RetryPolicy | None = None, log: RetryLog | None = None) -> None:
    """GET the MLflow server's /health, with retries."""
    import httpx

    def health() -> None:
        response = httpx.get(uri.rstrip("/") + "/health", timeout=5)
        if response.status_code >= 500:
            raise httpx.HTTPStatusError(f"HTTP {response.status_code}", request=response.request, response=response)

    call_with_retries(health, f"The MLflow server at {where(uri)}", START_HINT.format(name="mlflow", var="PERSONAS_MLFLOW_TRACKING_URI") + ".", (httpx.TransportError, httpx.HTTPStatusError), policy, log)


def check_services(cfg, environ: dict[str, str] | None = None, policy: RetryPolicy | None = None) -> dict[str, RetryLog]:
    """On the production profile, check PostgreSQL, Redis and (when configured) the MLflow server
    before a run, each with bounded retries; a one-line ServiceUnavailableError names the first
    that stays down. The local profile has nothing to check. Returns the retry log per service."""
    environ = os.environ if environ is None else environ
    if cfg.profile != "production":
        return {}
    from personaops.feature_store import redis_connection_string

    logs: dict[str, RetryLog] = {}
    registry = environ.get("PERSONAS_FEAST_REGISTRY_URL", "")
    if registry.startswith("postgresql"):
        check_postgres(registry, policy, logs.setdefault("postgresql", RetryLog()))
    redis_cs = environ.get("PERSONAS_FEAST_REDIS") or (redis_connection_string(environ["PERSONAS_REDIS_URL"]) if environ.get("PERSONAS_REDIS_URL") else "")
    if redis_cs:
        check_redis(redis_cs, policy, logs.setdefault("redis", RetryLog()))
    mlflow_uri = environ.get("PERSONAS_MLFLOW_TRACKING_URI", "")
    if mlflow_uri.startswith("http"):
        check_mlflow_server(mlflow_uri, policy, logs.setdefault("mlflow", RetryLog()))
    return logs


def redis_retryable() -> tuple[type[BaseException], ...]:
    """Redis errors worth retrying: lost or refused connections, timeouts, a server still loading."""
    from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

    return (ConnectionError, TimeoutError, BusyLoadingError, ConnectionResetError, BrokenPipeError)


def service_failure(exc: BaseException, environ: dict[str, str] | None = None) -> str | None:
    """One line for an exception that means a production service went away mid-run (after the
    client's own bounded retries), or None when `exc` is something else (a bug)."""
    environ = os.environ if environ is None else environ
    seen: set[int] = set()
    chain: list[BaseException] = []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for e in chain:
        name = f"{type(e).__module__}.{type(e).__name__}"
        text = str(e)
        mlflow_uri = environ.get("PERSONAS_MLFLOW_TRACKING_URI") or environ.get("MLFLOW_TRACKING_URI", "")
        if name.startswith("mlflow.") and ("API request to" in text or "Max retries exceeded" in text or "Connection refused" in text):
            return f"The MLflow server at {where(mlflow_uri)} stopped answering during the run (after MLflow's retries: {_short(e)}); no model version was promoted by this run — restart the server (`infra/services.sh up mlflow`) and run again."
        port = urlsplit(mlflow_uri).port if mlflow_uri.startswith("http") else None
        if name.startswith(("requests.", "urllib3.")) and port and (where(mlflow_uri) in text or f"port={port}" in text):
            return f"The MLflow server at {where(mlflow_uri)} stopped answering during the run ({_short(e)}); no model version was promoted by this run — restart the server (`infra/services.sh up mlflow`) and run again."
        if name.startswith(("psycopg.", "sqlalchemy.exc.")) and "OperationalError" in type(e).__name__:
            url = environ.get("PERSONAS_FEAST_REGISTRY_URL", "")
            return f"PostgreSQL at {where(url) if url else 'the configured URL'} stopped answering during the run ({_short(e)}); start it (`infra/services.sh up postgres`) and run again."
        if name.startswith("redis.exceptions.") and type(e).__name__ in ("ConnectionError", "TimeoutError", "BusyLoadingError"):
            cs = environ.get("PERSONAS_FEAST_REDIS", "") or environ.get("PERSONAS_REDIS_URL", "")
            return f"Redis at {where(cs.split(',', 1)[0]) if cs else 'the configured URL'} stopped answering during the run ({_short(e)}); start it (`infra/services.sh up redis`) and run again."
    return None
