"""The PersonaOps HTTP API (`personas serve`): personas for product and marketing tools.

`create_app(cfg)` builds a FastAPI app on one workspace; nothing happens at import, and the Feast
store, the MLflow client and the Parquet tables are opened on first use. Persona reads go through
the stock Feast SDK (feature service `persona_v1`) on the online store the pipeline publishes to.

Auth: `Authorization: Bearer <token>`; tokens map to roles reader < analyst < ml-engineer < admin, from
`api.tokens` in personas.yaml and `PERSONAS_API_TOKENS=token:role,...`. /health, /metrics and
the OpenAPI document are open (load balancers and Prometheus scrape them without secrets).
"""

import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from personaops.config import PersonasConfig
from personaops.errors import ConfigError, NotFoundError, PersonaOpsError
from personaops.workspace import Workspace

# reader < analyst < ml-engineer < admin, one order for the API and the CLI (personaops/roles.py).
# WRITER pushes events (living personas) and reads like a reader; admin may push too. Not in the
# order: an event producer needs no sensitive attributes.
from personaops.roles import ROLES, WRITER, allows, token_role  # noqa: E402

TOKENS_ENV = "PERSONAS_API_TOKENS"
# Person ids are opaque, printable and short; anything else is malformed input (422).
PERSON_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@#+\-]{0,127}$"
# The answers' messages, shared with the ASGI fast path (personaops.serving.FastPersonaRead).
MISSING_TOKEN = "Missing API token; send 'Authorization: Bearer <token>'."
UNKNOWN_TOKEN = "Unknown API token; ask an admin for a valid one."


def no_persona_message(person_id: str) -> str:
    """The 404 detail of a person the online store has no persona for."""
    return f"Person {person_id!r} has no persona in the online store; check the id (see `personas assignments`)."


def api_tokens(cfg: PersonasConfig, environ: dict[str, str] | None = None) -> dict[str, str]:
    """token -> role from personas.yaml's `api.tokens` and $PERSONAS_API_TOKENS (which wins)."""
    environ = dict(os.environ) if environ is None else environ
    tokens = dict(cfg.api.tokens)
    raw = environ.get(TOKENS_ENV, "").strip()
    for i, pair in enumerate(p.strip() for p in raw.split(",") if p.strip()):
        token, sep, role = pair.rpartition(":")
        if not sep or not token:
            raise ConfigError(f"{TOKENS_ENV} entry {i + 1} is not 'token:role'; write it as comma-separated pairs such as abc123:reader,def456:analyst.")
        if role not in (*ROLES, WRITER):
            raise ConfigError(f"{TOKENS_ENV} entry {i + 1} has role {role!r}; use one of {', '.join((*ROLES, WRITER))}.")
        tokens[token] = role
    return tokens


@dataclass
class PersonaService:
    """What the endpoints read: the online store through Feast, the champion's catalogue from
    MLflow, identity and sensitive tables from the workspace. Opened lazily, cached per version."""

    cfg: PersonasConfig
    ws: Workspace
    _store: Any = None
    _service: Any = None
    _reader: Any = None  # SqliteOnlineReader / RedisOnlineReader, or False for other online stores
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _profiles: dict[int, tuple[str, list[dict]]] = field(default_factory=dict)
    _tables: dict[Path, tuple[float, Any]] = field(default_factory=dict)

    def _feast(self):
        if self._store is None:
            from personaops.feature_store import SERVING_SERVICE, feature_store, local_registry_missing

            if local_registry_missing(self.ws, self.cfg):
                raise NotFoundError(f"No Feast registry in {self.ws.root}; run `personas run` (or `personas demo`) before serving.")
            store = feature_store(self.ws, self.cfg)
            self._service = store.get_feature_service(SERVING_SERVICE)
            self._store = store
        return self._store

    def personas_of(self, person_ids: list[str]) -> list[dict | None]:
        """The published assignment of each person (None where the online store has none)."""
        if self._reader is None:
            with self._lock:
                store = self._feast()
                from personaops.serving import RedisOnlineReader, SqliteOnlineReader

                # SQLite and Redis: Feast's own rows / hash fields read directly (same bytes, no
                # per-call Feast planning).
                reader = next((r for r in (SqliteOnlineReader, RedisOnlineReader) if r.supports(store)), None)
                self._reader = reader(store, "persona_assignment") if reader else False
        if self._reader:
            rows = self._reader.read(person_ids)
            fields = ("persona_id", "persona_name", "confidence", "model_version")
            found = {f: [None if r is None else r.get(f) for r in rows] for f in fields}
        else:
            with self._lock:  # one SQLite connection inside Feast's online store
                store = self._feast()
                found = store.get_online_features(features=self._service, entity_rows=[{"person_id": p} for p in person_ids]).to_dict()
        out: list[dict | None] = []
        for i, person_id in enumerate(person_ids):
            version = found["model_version"][i]
            if version is None:
                out.append(None)
                continue
            confidence = found["confidence"][i]
            out.append(
                {
                    "person_id": person_id,
                    "persona_id": int(found["persona_id"][i]),
                    "persona_name": found["persona_name"][i],
                    "confidence": None if confidence is None or math.isnan(confidence) else float(confidence),
                    "model_version": int(version),
                }
            )
        return out

    def reads_locally(self) -> bool:
        """True once reads go straight to SQLite or Redis (tens to hundreds of microseconds: fast
        enough for the event loop)."""
        return bool(self._reader)

    def warm(self) -> None:
        """Open the online store now, so a server process's first request does not pay for it."""
        try:
            self.personas_of(["warm-up"])
        except PersonaOpsError:
            pass  # nothing published yet: /health says so

    def champion(self) -> tuple[int, str]:
        from models import registry

        name = self.cfg.model.registered_name
        version = registry.alias_version(self.ws, name, registry.CHAMPION)
        if version is None:
            raise NotFoundError(f"No champion persona model in {self.ws.root}; run `personas run` first.")
        return version, name

    def catalogue(self) -> dict:
        from models import registry
        from models.train import load_profiles

        version, name = self.champion()
        if version not in self._profiles:
            run_id = registry.version_run_id(self.ws, name, version)
            self._profiles[version] = (run_id, load_profiles(self.ws, run_id))
        run_id, profiles = self._profiles[version]
        return {"model": name, "version": version, "run_id": run_id, "personas": profiles}

    def _table(self, path: Path):
        """A workspace Parquet table, re-read when the file changes."""
        import pandas as pd

        if not path.exists():
            raise NotFoundError(f"No table {path.name} in {self.ws.root}; run `personas run` first.")
        mtime = path.stat().st_mtime
        cached = self._tables.get(path)
        if cached is None or cached[0] != mtime:
            cached = (mtime, pd.read_parquet(path))
            self._tables[path] = cached
        return cached[1]

    def sensitive(self, person_id: str) -> dict | None:
        table = self._table(self.ws.root / "audit" / "person_sensitive.parquet")
        rows = table[table["person_id"] == person_id]
        if rows.empty:
            return None
        return {k: _json_value(v) for k, v in rows.iloc[-1].items() if k != "person_id"}

    def records(self, person_id: str) -> list[dict]:
        table = self._table(self.ws.identity / "record_person.parquet")
        rows = table[table["person_id"] == person_id]
        cols = [c for c in ("source", "source_key", "linked_by") if c in rows.columns]
        return [{k: _json_value(v) for k, v in r.items()} for r in rows[cols].to_dict("records")]


def _json_value(v):
    """NaN/NaT -> None and NumPy scalars -> Python, so JSON encoding never fails."""
    try:
        import pandas as pd

        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v.item() if hasattr(v, "item") else v


# Set by `personas serve --workers N --insecure-dev` for its worker processes only.
SERVE_INSECURE_ENV = "_PERSONAS_SERVE_WORKER_INSECURE_DEV"


def app_from_environment():
    """The app of one `personas serve --workers N` worker process (a uvicorn factory): the
    configuration and tokens from personas.yaml and the environment, as the parent read them."""
    from personaops.config import load_config

    app = create_app(load_config(), insecure_dev=os.environ.get(SERVE_INSECURE_ENV) == "1")
    app.state.service.warm()
    return app


def create_app(cfg: PersonasConfig, insecure_dev: bool = False, environ: dict[str, str] | None = None):
    """The FastAPI app on cfg's workspace. Raises ConfigError when no API token is configured
    unless `insecure_dev` (then every caller is treated as admin)."""
    from fastapi import Body, Depends, FastAPI, HTTPException, Path as PathParam, Request
    from fastapi.responses import JSONResponse, Response
    from fastapi.concurrency import run_in_threadpool
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
    from pydantic import BaseModel, ConfigDict, Field

    from personaops import __version__

    tokens = api_tokens(cfg, environ)
    if not tokens and not insecure_dev:
        raise ConfigError(
            f"No API token is configured; add api.tokens to personas.yaml or set {TOKENS_ENV}=token:role (roles: {', '.join(ROLES)}), or pass --insecure-dev for local development only."
        )
    ws = Workspace.from_config(cfg)
    service = PersonaService(cfg, ws)

    # Per-app registry: two apps in one process (tests) never share counters.
    metrics = CollectorRegistry()
    requests_total = Counter("personas_api_requests", "HTTP requests served", ["method", "route", "status"], registry=metrics)
    latency = Histogram(
        "personas_api_request_seconds", "Request latency (seconds)", ["route"], registry=metrics,
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    )  # fmt: skip
    persons_looked_up = Counter("personas_api_persons_looked_up", "Persons read from the online store", ["found"], registry=metrics)

    # FastAPI's native OpenTelemetry layer asks on every request whether a tracer, meter or logger
    # provider is configured (10-40 us of a 70-120 us lookup here; docs/serving.md): kept when
    # OpenTelemetry is configured through its environment (OTEL_*, FASTAPI_OTEL_AUTO_CONFIGURE).
    otel = any(k.startswith("OTEL_") or k == "FASTAPI_OTEL_AUTO_CONFIGURE" for k in os.environ)
    app = FastAPI(
        title="PersonaOps API",
        version=__version__,
        description="Persona assignments, the persona catalogue and person lineage, served from the Feast online store the pipeline publishes to.",
        **({} if otel else {"telemetry": {"tracing": False, "metrics": False, "logs": False}}),
    )
    app.state.service = service

    children: dict[tuple, tuple] = {}  # (method, route, status) -> (counter, histogram) children

    class Measure:
        """Counts and times every request by route template (plain ASGI: no per-request task)."""

        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.inner(scope, receive, send)
            started, status = time.perf_counter(), [500]

            async def send_status(message):
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await self.inner(scope, receive, send_status)
            finally:
                # The router records the matched route in the shared scope.
                template = getattr(scope.get("route"), "path", "unmatched")
                key = (scope["method"], template, status[0])
                counted = children.get(key)
                if counted is None:  # labels() looks its child up under a lock: once per key
                    counted = children[key] = (requests_total.labels(scope["method"], template, str(status[0])), latency.labels(template))
                counted[0].inc()
                counted[1].observe(time.perf_counter() - started)

    from personaops.serving import FastPersonaRead

    # Inside Measure (counted alike): the ordinary 200, 401 and 404 answers of the two lookups.
    app.add_middleware(
        FastPersonaRead, service=service, tokens=tokens, router=app.router, id_pattern=PERSON_ID_PATTERN,
        on_found=persons_looked_up.labels("true").inc, on_missing=persons_looked_up.labels("false").inc, max_lookup_ids=cfg.api.max_lookup_ids,
    )  # fmt: skip
    app.add_middleware(Measure)
    from personaops.http_limits import BodySizeLimit

    app.add_middleware(BodySizeLimit, max_bytes=cfg.api.max_body_bytes)  # 413 before any body is read

    @app.exception_handler(NotFoundError)
    async def not_found(_: Request, exc: NotFoundError):
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(PersonaOpsError)
    async def not_ready(_: Request, exc: PersonaOpsError):
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    bearer = HTTPBearer(auto_error=False, description="An API token from api.tokens or PERSONAS_API_TOKENS.")

    # Auth dependencies are async (no I/O): sync ones would each cost a thread-pool hop per request.
    async def caller_role(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
        if not tokens:  # --insecure-dev with nothing configured
            return "admin"
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(401, MISSING_TOKEN, headers={"WWW-Authenticate": "Bearer"})
        role = token_role(credentials.credentials, tokens)
        if role is None:
            raise HTTPException(401, UNKNOWN_TOKEN, headers={"WWW-Authenticate": "Bearer"})
        return role

    def require(minimum: str):
        async def check(role: Annotated[str, Depends(caller_role)]) -> str:
            if not allows(role, minimum):
                raise HTTPException(403, f"This endpoint needs the '{minimum}' role; your token has '{role}'.")
            return role

        return check

    PersonId = Annotated[str, PathParam(pattern=PERSON_ID_PATTERN, description="A resolved person id")]

    class Persona(BaseModel):
        person_id: str
        persona_id: int = Field(description="persona of the champion model (-1: unassigned outlier)")
        persona_name: str | None
        confidence: float | None = Field(description="assignment confidence (0-1)")
        model_version: int = Field(description="persona-model version that published this assignment")

    class LookupRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")  # an unknown field is a 422, not silently ignored

        person_ids: list[Annotated[str, Field(pattern=PERSON_ID_PATTERN)]] = Field(min_length=1, max_length=cfg.api.max_lookup_ids)

    class LookupResponse(BaseModel):
        personas: list[Persona] = Field(description="found persons, in request order")
        not_found: list[str] = Field(description="requested ids the online store has no persona for")

    class Catalogue(BaseModel):
        model: str
        version: int
        run_id: str
        personas: list[dict[str, Any]]

    class Health(BaseModel):
        status: Literal["ok", "not_ready"]
        online_store: bool
        champion_version: int | None
        version: str

    class Sensitive(BaseModel):
        person_id: str
        attributes: dict[str, Any] = Field(description="sensitive attributes (bias audits only)")

    class Explanation(BaseModel):
        person_id: str
        persona: Persona
        model: str
        run_id: str = Field(description="MLflow run that trained the serving model version")
        records: list[dict[str, Any]] = Field(description="source records resolved into this person")
        # The lineage document of `personas explain` (personaops/lineage.py, docs/governance.md):
        traits: dict[str, Any] | None = Field(None, description="persona_v2 trait features published with this model version")
        model_version: int | None = Field(None, description="model version that published the persona")
        mlflow_run_id: str | None = Field(None, description="MLflow run that trained that version (= run_id)")
        pipeline_run_id: str | None = Field(None, description="`personas run` whose publish this is (runs/<id>.json)")
        snapshot_id: str | None = Field(None, description="immutable content hash of that run's inputs")
        features: dict[str, Any] = Field(default_factory=dict, description="the person's row in each feature table")
        source_rows: list[dict[str, Any]] = Field(default_factory=list, description="source, batch, row number, row hash of each record; in_lake checked")
        identity: dict[str, Any] = Field(default_factory=dict, description="identity-graph evidence (linked_by, edges) that tied the records to this person")
        flags: dict[str, Any] | None = Field(None, description="amber flags served online (persona_flags_v2): risk, engagement and opportunity with probabilities and reasons; None before the flags stage ran")

    def one(person_id: str) -> dict:
        found = service.personas_of([person_id])[0]
        if found is None:
            raise NotFoundError(no_persona_message(person_id))
        persons_looked_up.labels("true").inc()
        return found

    @app.get("/health", response_model=Health, tags=["operations"], responses={503: {"model": Health}})
    def health(response: Response) -> dict:
        """Readiness: 200 when there is an online store and a champion to serve, else 503."""
        if cfg.profile == "local":
            online = (ws.feast / "registry.db").exists() and (ws.feast / "online_store.db").exists()
            tracked = (ws.mlflow / "mlflow.db").exists()  # never create an MLflow store as a side effect of a probe
        else:  # production: the registry is in PostgreSQL and the online store in Redis; ask them
            try:
                service.personas_of(["health-probe"])  # reaches the registry and the online store
                online = tracked = True
            except Exception:  # noqa: BLE001 - any failure to reach the stores is "not ready", never a 500
                online = tracked = False
        try:
            version = service.champion()[0] if online and tracked else None
        except Exception:  # noqa: BLE001 - a tracking server that does not answer is "not ready" too
            version = None
        ready = online and version is not None
        response.status_code = 200 if ready else 503
        return {"status": "ok" if ready else "not_ready", "online_store": online, "champion_version": version, "version": __version__}

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def prometheus_metrics() -> Response:
        """Prometheus text exposition of request counts and latencies."""
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    @app.get("/persons/{person_id}/persona", response_model=Persona, tags=["personas"], dependencies=[Depends(require("reader"))])
    async def persona_of(person_id: PersonId) -> dict:
        """One person's persona, from the Feast online store (feature service persona_v1)."""
        # A local SQLite read (tens of microseconds) runs on the event loop; anything else in a thread.
        return one(person_id) if service.reads_locally() else await run_in_threadpool(one, person_id)

    @app.post("/personas/lookup", response_model=LookupResponse, tags=["personas"], dependencies=[Depends(require("reader"))])
    async def lookup(request: Annotated[LookupRequest, Body()]) -> dict:
        """Many persons' personas in one online read; unknown ids are listed, not errors."""
        ids = list(dict.fromkeys(request.person_ids))
        found = service.personas_of(ids) if service.reads_locally() else await run_in_threadpool(service.personas_of, ids)
        hits = [f for f in found if f is not None]
        persons_looked_up.labels("true").inc(len(hits))
        persons_looked_up.labels("false").inc(len(ids) - len(hits))
        return {"personas": hits, "not_found": [p for p, f in zip(ids, found) if f is None]}

    @app.get("/personas", response_model=Catalogue, tags=["personas"], dependencies=[Depends(require("reader"))])
    def catalogue() -> dict:
        """The champion model's persona catalogue: who each persona is, how big, what they say."""
        return service.catalogue()

    @app.get("/persons/{person_id}/sensitive", response_model=Sensitive, tags=["analyst"], dependencies=[Depends(require("analyst"))])
    def sensitive(person_id: PersonId) -> dict:
        """A person's sensitive attributes, as recorded for bias audits (analyst role)."""
        attributes = service.sensitive(person_id)
        if attributes is None:
            raise NotFoundError(f"Person {person_id!r} has no sensitive attributes on record; check the id.")
        return {"person_id": person_id, "attributes": attributes}

    @app.get("/persons/{person_id}/explain", response_model=Explanation, tags=["analyst"], dependencies=[Depends(require("analyst"))])
    def explain(person_id: PersonId) -> dict:
        """Where a person's persona comes from: source records, model version and MLflow run (analyst role)."""
        from models import registry

        from mlflow.exceptions import MlflowException

        persona = one(person_id)
        name = cfg.model.registered_name
        try:
            run_id = registry.version_run_id(ws, name, persona["model_version"])
        except MlflowException:
            raise NotFoundError(f"Model version {persona['model_version']} that published {person_id!r}'s persona is not in the registry of {ws.root}; re-publish with `personas run`.") from None
        from personaops.lineage import explain as lineage_explain

        return {**lineage_explain(cfg, ws, person_id, persona=persona), "run_id": run_id, "flags": person_flags(person_id)}

    def person_flags(person_id: str) -> dict | None:
        from personaops.insights import online_flags

        with service._lock:  # one SQLite connection inside Feast's online store
            return online_flags(service._feast(), person_id)

    @app.get("/persons/{person_id}/flags", tags=["analyst"], dependencies=[Depends(require("analyst"))])
    def amber_flags_of(person_id: PersonId) -> dict:
        """A person's amber flags as served online: risk (churn probability), engagement and opportunity (expansion propensity), each with its reasons (analyst role)."""
        found = person_flags(person_id)
        if found is None:
            raise NotFoundError(f"Person {person_id!r} has no amber flags in the online store; check the id, or run `personas run` so the flags stage publishes them.")
        return {"person_id": person_id, **found}

    # --- living personas: pushed events re-assign a person online (docs/serving.md) ----------
    from datetime import datetime as _datetime

    from personaops.serving import MAX_EVENTS_PER_PUSH, EventError, LivingPersonas

    living = LivingPersonas(cfg, ws)
    app.state.living = living

    async def require_writer(role: Annotated[str, Depends(caller_role)]) -> str:
        if role not in (WRITER, "admin"):
            raise HTTPException(403, f"Pushing events needs the '{WRITER}' or 'admin' role; your token has '{role}'.")
        return role

    class ProductEvent(BaseModel):
        model_config = ConfigDict(extra="forbid")  # an unknown field is a 422, not silently ignored

        event_type: str = Field(min_length=1, max_length=120, description="product event type, as in the events source (e.g. api_call)")
        event_time: _datetime | None = Field(None, description="when it happened (ISO 8601; default: now); not in the future")
        session_id: str | None = Field(None, max_length=200, description="session it belongs to (default: one session per day)")

    class EventsRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")  # an unknown field is a 422, not silently ignored

        events: list[ProductEvent] = Field(min_length=1, max_length=MAX_EVENTS_PER_PUSH)

    class EventsResponse(Persona):
        previous: dict[str, Any] | None = Field(description="the assignment before these events (None: the person had none online)")
        behaviour: dict[str, Any] = Field(description="the person's person_behaviour features after these events, as written online")
        as_of: str = Field(description="time the new features and assignment are as of (ISO 8601)")
        took_ms: float = Field(description="server time to apply the events and re-assign (milliseconds)")

    @app.exception_handler(EventError)
    async def bad_event(_: Request, exc: EventError):
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.post("/persons/{person_id}/events", response_model=EventsResponse, tags=["personas"], dependencies=[Depends(require_writer)])
    def push_events(person_id: PersonId, request: Annotated[EventsRequest, Body()]) -> dict:
        """New product events of one person: their behaviour features update online and the champion
        model re-assigns their persona at once, written online with the model version in one
        transaction (role writer or admin)."""
        return living.push(person_id, [e.model_dump() for e in request.events])

    # --- business questions on the persona graph (personaops/insights.py; analyst role) -------
    from personaops import insights

    @app.get("/insights/campaigns/{campaign}", tags=["insights"], dependencies=[Depends(require("analyst"))])
    def insight_campaign(campaign: Annotated[str, PathParam(max_length=200)]) -> dict:
        """Which personas convert after a campaign: per persona exposed count, conversion rate and
        uplift vs the holdout of the same persona (95% Newcombe interval, p-value), ranked by uplift."""
        return {"campaign": campaign, "personas": insights.frame_records(insights.ask_campaign(ws, campaign))}

    @app.get("/insights/churn-signals", tags=["insights"], dependencies=[Depends(require("analyst"))])
    def insight_churn_signals(top: int = 20, both: bool = False) -> dict:
        """Graph signals ranked by association with churn within personas: Mantel-Haenszel odds
        ratio, 95% interval, Benjamini-Hochberg adjusted p-value; churn-raising first unless `both`."""
        return {"signals": insights.frame_records(insights.ask_churn_signals(ws, max(1, min(top, 500)), "both" if both else "risk"))}

    @app.get("/insights/personas/{persona}/intents", tags=["insights"], dependencies=[Depends(require("analyst"))])
    def insight_intents(persona: Annotated[str, PathParam(max_length=200)]) -> dict:
        """Which intents drive a persona's tickets (id or name): share of its tickets, lift vs everyone."""
        return {"persona": persona, "intents": insights.frame_records(insights.ask_intents(ws, persona))}

    @app.get("/insights/personas/{persona}/changes", tags=["insights"], dependencies=[Depends(require("analyst"))])
    def insight_changes(persona: Annotated[str, PathParam(max_length=200)]) -> dict:
        """What changed for a persona since the previous run (size, churn, conversion, flags, intents, signals)."""
        return insights.ask_changes(ws, persona)

    from fastapi import Query

    @app.get("/insights/opportunities", tags=["insights"], dependencies=[Depends(require("analyst"))])
    def insight_opportunities(persona: Annotated[str | None, Query(max_length=200)] = None, top: int = 20) -> dict:
        """Who is likely to take the expansion offer (insights.opportunity_campaign): personas ranked by
        mean calibrated propensity with their amber share, and the top people (of `persona`) with reasons."""
        return insights.ask_opportunities(ws, persona, max(1, min(top, 500)))

    from personaops.catalog import add_catalog_routes

    add_catalog_routes(app, cfg, ws, tokens)  # GET / (the persona catalogue page) and the reports it links

    return app
