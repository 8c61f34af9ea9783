"""The online serving contract beyond the assignment: the model's input views and the assigned
persona's profile traits published online, and living personas (pushed events re-assign a
person online at once, without a batch run).

Feature services over these views are declared in feature_repo/feature_services.py and
documented in docs/serving.md. Every online write goes through personaops.online_publish: a
batch publish replaces each view atomically; a pushed event reads and writes the person's
behaviour, assignment and traits rows in one step (one SQLite transaction, or one Redis hash
update), so readers never see the new assignment with the old model version.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from personaops.config import PersonasConfig
from personaops.errors import NotFoundError, PersonaOpsError, PipelineStateError
from personaops.workspace import Workspace

# Model-input views a downstream consumer (and a pushed event) can read online.
ONLINE_INPUT_VIEWS = ("person_behaviour", "person_support", "person_survey")
BEHAVIOUR_VIEW = "person_behaviour"
ASSIGNMENT_VIEW = "persona_assignment"
TRAITS_VIEW = "persona_traits"
TRAIT_FEATURES = (
    "profile_model_version", "persona_description", "persona_size", "persona_share", "persona_top_traits",
    "persona_top_terms", "persona_churn_rate", "persona_conversion_rate", "persona_engagement_events",
)  # fmt: skip
TRAITS_SEPARATOR = "; "
MAX_EVENTS_PER_PUSH = 10_000
# A pushed event may be this far ahead of the server clock (seconds): clocks drift a little.
FUTURE_SLACK_S = 300.0


class EventError(PersonaOpsError):
    """A pushed event that cannot be applied (unknown type, time in the future, ...): a 422."""


# --- persona traits, denormalised per person ----------------------------------------------------
def _kpi(kpis: dict, *names: str) -> float:
    for name in names:
        if name in kpis and kpis[name].get("value") is not None:
            return float(kpis[name]["value"])
    return float("nan")


def trait_values(profile: dict | None, version: int) -> dict:
    """The persona_traits features of one persona profile (models/profiles.py); empty values for
    an unassigned person (no profile)."""
    if profile is None:
        return {"profile_model_version": int(version), "persona_description": "", "persona_size": 0, "persona_share": float("nan"),
                "persona_top_traits": "", "persona_top_terms": "", "persona_churn_rate": float("nan"),
                "persona_conversion_rate": float("nan"), "persona_engagement_events": float("nan")}  # fmt: skip
    kpis = profile.get("kpis", {})
    traits = [f"{'more' if t['z'] > 0 else 'less'} {t['label']}" for t in profile.get("traits", [])[:5]]
    return {
        "profile_model_version": int(version),
        "persona_description": str(profile.get("description", "")),
        "persona_size": int(profile.get("size", 0)),
        "persona_share": float(profile.get("share", float("nan"))),
        "persona_top_traits": TRAITS_SEPARATOR.join(traits),
        "persona_top_terms": TRAITS_SEPARATOR.join(map(str, profile.get("terms", [])[:5])),
        "persona_churn_rate": _kpi(kpis, "churned_rate", "churn_rate"),
        "persona_conversion_rate": _kpi(kpis, "campaign_conversion_rate", "converted_rate"),
        "persona_engagement_events": _kpi(kpis, "engagement_events"),
    }


def traits_rows(assignments: pd.DataFrame, profiles: list[dict], version: int, at: pd.Timestamp) -> pd.DataFrame:
    """persona_traits rows (person_id, trait features, event_timestamp, created) for assignments
    (person_id, persona_id) of one model version."""
    by_persona = {int(p["persona_id"]): trait_values(p, version) for p in profiles}
    empty = trait_values(None, version)
    values = [by_persona.get(int(pid), empty) for pid in assignments["persona_id"]]
    rows = pd.DataFrame(values, columns=list(TRAIT_FEATURES))
    rows.insert(0, "person_id", assignments["person_id"].astype(str).to_numpy())
    rows["profile_model_version"] = rows["profile_model_version"].astype("int64")
    rows["persona_size"] = rows["persona_size"].astype("int64")
    rows["event_timestamp"], rows["created"] = at, at
    return rows


def publish_online_views(ws: Workspace, cfg: PersonasConfig, assignments: pd.DataFrame, profiles: list[dict], version: int, at: pd.Timestamp) -> dict[str, int]:
    """Publish the model-input views (as the features stage wrote them) and the persona traits of
    these assignments online, one transaction per view; the traits also to their offline table
    (history per model version). Returns rows written online per view."""
    from personaops.feature_store import feature_store, write_table
    from personaops.online_publish import online_publisher

    store = feature_store(ws, cfg)
    publisher = online_publisher(store)
    online = {fv.name for fv in store.list_feature_views() if fv.online}
    written: dict[str, int] = {}
    for view in ONLINE_INPUT_VIEWS:
        path = ws.feature_table(view)
        if view in online and path.exists():
            written[view] = publisher.replace(view, pd.read_parquet(path))
    rows = traits_rows(assignments, profiles, version, at)
    path = ws.feature_table(TRAITS_VIEW)
    if path.exists():
        history = pd.read_parquet(path)
        history = history[history["profile_model_version"] != int(version)]
        write_table(ws, TRAITS_VIEW, pd.concat([history, rows], ignore_index=True))
    else:
        write_table(ws, TRAITS_VIEW, rows)
    if TRAITS_VIEW in online:
        written[TRAITS_VIEW] = publisher.replace(TRAITS_VIEW, rows)
    return written


# --- living personas: pushed product events -----------------------------------------------------
def _utc(value) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def updated_behaviour(current: dict[str, float], reference: pd.Timestamp | None, events: pd.DataFrame, features: list[str]) -> tuple[dict[str, float], pd.Timestamp]:
    """The person_behaviour features after `events` (event_type, event_time, session_id), from
    the person's current features (empty for a person with no events yet) as of `reference`.

    Counts add up; event-type shares are recomputed from counts; each distinct pushed session_id
    is a new session (a pushed event without one opens a session per day); active days grow by
    the pushed days after the person's last event. Returns (features, the new as-of time)."""
    from personaops.features import event_type_column

    n_old = float(current.get("n_events") or 0.0)
    shares = [f for f in features if f.startswith("share_")]
    counts = {f: float(current.get(f) or 0.0) * n_old for f in shares}
    columns = events["event_type"].map(event_type_column)
    unknown = sorted(set(columns) - set(shares))
    if unknown:
        if "share_other" not in shares:
            known = ", ".join(s[len("share_") :] for s in shares)
            raise EventError(f"Event type(s) {', '.join(unknown)} are not in the person_behaviour view; send one of: {known}.")
        columns = columns.where(columns.isin(shares), "share_other")
    for col, n in columns.value_counts().items():
        counts[col] += float(n)
    n_new = n_old + len(events)
    times = events["event_time"]
    last_old = None
    if reference is not None and current.get("days_since_last_event") is not None and n_old > 0:
        last_old = reference - pd.Timedelta(days=float(current["days_since_last_event"]))
    last = times.max() if last_old is None else max(last_old, times.max())
    as_of = times.max() if reference is None else max(reference, times.max())
    days = times.dt.floor("D")
    new_days = days[days > last_old.floor("D")] if last_old is not None else days
    sessions = events["session_id"].where(events["session_id"].notna(), "day:" + days.astype(str))
    out = dict(current)
    out["n_events"] = int(round(n_new))
    out["n_sessions"] = int(round(float(current.get("n_sessions") or 0.0))) + int(sessions.nunique())
    out["active_days"] = int(round(float(current.get("active_days") or 0.0))) + int(new_days.nunique())
    out["events_per_session"] = n_new / max(out["n_sessions"], 1)
    out["days_since_last_event"] = (as_of - last).total_seconds() / 86400.0
    for f in shares:
        out[f] = counts[f] / n_new if n_new else 0.0
    return {f: out.get(f, 0.0) for f in features}, as_of


def event_frame(events: list[dict], now: datetime | None = None) -> pd.DataFrame:
    """Pushed events as a frame (event_type, event_time UTC, session_id); EventError on bad ones."""
    if not events:
        raise EventError("No events given; send at least one {event_type, event_time}.")
    if len(events) > MAX_EVENTS_PER_PUSH:
        raise EventError(f"{len(events):,} events in one push; send at most {MAX_EVENTS_PER_PUSH:,} per request.")
    now = now or datetime.now(timezone.utc)
    frame = pd.DataFrame(
        {
            "event_type": [str(e.get("event_type") or "").strip() for e in events],
            "event_time": [_utc(e.get("event_time") or now) for e in events],
            "session_id": [e.get("session_id") for e in events],
        }
    )
    if (frame["event_type"] == "").any():
        raise EventError(f"Event {int((frame['event_type'] == '').idxmax()) + 1} has no event_type; give each event its type.")
    late = frame["event_time"] > pd.Timestamp(now) + pd.Timedelta(seconds=FUTURE_SLACK_S)
    if late.any():
        raise EventError(f"Event {int(late.idxmax()) + 1} is dated {frame['event_time'][late].iloc[0].isoformat()}, in the future; send events that happened.")
    return frame


@dataclass
class LivingPersonas:
    """Applies pushed events: the person's behaviour features update online and the champion
    model (loaded once, reloaded when the champion alias moves) re-assigns their persona.

    The features a push does not change (support, survey, CRM profile, text embedding) come from
    the offline tables the last batch wrote, read once; the behaviour features are read from the
    online store inside the write transaction, so concurrent pushes (several server workers) add
    up instead of overwriting each other."""

    cfg: PersonasConfig
    ws: Workspace
    champion_check_s: float = 1.0  # how stale the cached champion version may be (seconds)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _store: Any = None
    _model: Any = None
    _version: int | None = None
    _checked_at: float = 0.0
    _profiles: dict[int, dict] = field(default_factory=dict)
    _frame: pd.DataFrame | None = None
    _as_of: pd.Timestamp | None = None
    _views: dict[str, Any] = field(default_factory=dict)
    _publisher: Any = None

    def _feast(self):
        if self._store is None:
            from personaops.feature_store import feature_store, local_registry_missing

            if local_registry_missing(self.ws, self.cfg):
                raise NotFoundError(f"No Feast registry in {self.ws.root}; run `personas run` (or `personas demo`) first.")
            self._store = feature_store(self.ws, self.cfg)
            for name in (BEHAVIOUR_VIEW, ASSIGNMENT_VIEW, TRAITS_VIEW):
                try:
                    self._views[name] = self._store.get_feature_view(name)
                except Exception as exc:  # noqa: BLE001 — Feast raises its own not-found types
                    raise PipelineStateError(f"Feature view {name} is not applied in {self.ws.root}; re-run `personas run` to apply the Feast repo.") from exc
        return self._store

    def _champion(self):
        """(version, pyfunc model, profiles by persona_id) of the champion, cached."""
        from models import registry
        from models.train import load_profiles

        now = time.monotonic()
        if self._model is None or now - self._checked_at > self.champion_check_s:
            name = self.cfg.model.registered_name
            version = registry.alias_version(self.ws, name, registry.CHAMPION)
            if version is None:
                raise NotFoundError(f"No champion persona model in {self.ws.root}; run `personas run` first.")
            if version != self._version:
                _, model = registry.load_champion(self.ws, name)
                profiles = load_profiles(self.ws, registry.version_run_id(self.ws, name, version))
                self._model, self._version = model, version
                self._profiles = {int(p["persona_id"]): p for p in profiles}
            self._checked_at = now
        return self._version, self._model, self._profiles

    def _base_frame(self) -> pd.DataFrame:
        if self._frame is None:
            from personaops.features import current_model_frame

            tables, self._frame, _ = current_model_frame(self.ws)
            behaviour = tables.get(BEHAVIOUR_VIEW)
            self._as_of = _utc(behaviour["event_timestamp"].max()) if behaviour is not None and len(behaviour) else None
        return self._frame

    def warm(self) -> None:
        """Open the store, load the champion and the feature frame now (not on the first push)."""
        with self._lock:
            self._feast()
            self._champion()
            self._base_frame()

    def push(self, person_id: str, events: list[dict]) -> dict:
        """Apply `events` to `person_id`; return the new assignment, the behaviour features and
        the time taken (milliseconds)."""
        started = time.perf_counter()
        frame_events = event_frame(events)
        with self._lock:
            store = self._feast()
            version, model, profiles = self._champion()
            base = self._base_frame()
            if person_id not in base.index:
                raise NotFoundError(f"Person {person_id!r} is not a resolved person in {self.ws.root}; check the id (see `personas assignments`).")
            result = self._push_online(store, person_id, frame_events, base, version, model, profiles)
        self._record(person_id, frame_events, result)
        result["took_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return result

    def _assign(self, person_id: str, behaviour: dict, base: pd.DataFrame, model, version: int, profiles: dict, at: pd.Timestamp) -> dict[str, pd.DataFrame]:
        row = base.loc[[person_id]].copy()
        for col, value in behaviour.items():
            if col in row.columns:
                row[col] = float(value)
        predicted = model.predict(row.reset_index(drop=True)).iloc[0]
        assignment = pd.DataFrame(
            {"person_id": [person_id], "persona_id": [int(predicted["persona_id"])], "persona_name": [str(predicted["persona_name"])],
             "confidence": [float(predicted["confidence"])], "model_version": [int(version)], "event_timestamp": [at], "created": [at]}
        )  # fmt: skip
        traits = traits_rows(assignment, list(profiles.values()), version, at)
        behaviour_row = pd.DataFrame([{"person_id": person_id, **behaviour, "event_timestamp": at, "created": at}])
        for f in self._views[BEHAVIOUR_VIEW].features:  # keep the view's declared integer columns integral
            if f.dtype.to_value_type().name == "INT64":
                behaviour_row[f.name] = behaviour_row[f.name].round().astype("int64")
        return {BEHAVIOUR_VIEW: behaviour_row, ASSIGNMENT_VIEW: assignment, TRAITS_VIEW: traits}

    def _result(self, person_id: str, rows: dict[str, pd.DataFrame], before: dict | None) -> dict:
        a = rows[ASSIGNMENT_VIEW].iloc[0]
        b = rows[BEHAVIOUR_VIEW].iloc[0]
        features = {k: (None if isinstance(v, float) and math.isnan(v) else (v.item() if hasattr(v, "item") else v))
                    for k, v in b.items() if k not in ("person_id", "event_timestamp", "created")}  # fmt: skip
        return {
            "person_id": person_id,
            "persona_id": int(a["persona_id"]),
            "persona_name": str(a["persona_name"]),
            "confidence": float(a["confidence"]),
            "model_version": int(a["model_version"]),
            "previous": before,
            "behaviour": features,
            "as_of": pd.Timestamp(a["event_timestamp"]).isoformat(),
        }

    def _push_online(self, store, person_id, events, base, version, model, profiles) -> dict:
        """Read the person's behaviour and assignment and write behaviour, traits and assignment
        through the online store's publisher (personaops.online_publish, the batch publish's own
        encoding): one transaction on SQLite, one WATCH/MULTI hash update on Redis."""
        from personaops.online_publish import online_publisher

        if self._publisher is None:
            self._publisher = online_publisher(store)
        behaviour_features = [f.name for f in self._views[BEHAVIOUR_VIEW].features]

        def update(current):
            held, assigned = current[BEHAVIOUR_VIEW], current[ASSIGNMENT_VIEW]
            reference = None
            if held is not None:
                # A store that returns no event times (Feast's read): the batch's as-of time.
                reference = held.event_time if held.event_time is not None else self._as_of
            behaviour, as_of = updated_behaviour(held.values if held else {}, reference, events, behaviour_features)
            rows = self._assign(person_id, behaviour, base, model, version, profiles, as_of)
            # The assignment last: a store that writes view after view shows it only with its traits.
            writes = {BEHAVIOUR_VIEW: rows[BEHAVIOUR_VIEW], TRAITS_VIEW: rows[TRAITS_VIEW], ASSIGNMENT_VIEW: rows[ASSIGNMENT_VIEW]}
            return writes, (rows, assigned.values if assigned else None)

        rows, before = self._publisher.update_entity(person_id, [BEHAVIOUR_VIEW, ASSIGNMENT_VIEW], update)
        return self._result(person_id, rows, before)

    def _record(self, person_id: str, events: pd.DataFrame, result: dict) -> None:
        """Append the push to the workspace's event log (the next batch run reads its sources, not
        this log: pushed events must also reach the source system)."""
        path = Workspace.ensure(self.ws.root / "events" / "pushed.jsonl")
        entry = {
            "at": datetime.now(timezone.utc).isoformat(),
            "person_id": person_id,
            "events": json.loads(events.assign(event_time=events["event_time"].map(lambda t: t.isoformat())).to_json(orient="records")),
            "persona_id": result["persona_id"],
            "model_version": result["model_version"],
        }
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")



# --- fast online reads ----------------------------------------------------------------------------
def entity_key_builder(join_key: str, version: int):
    """(one_key, many_keys): Feast's serialized entity key of one string value, and of many.
    One key costs no NumPy or Feast call: Feast's bytes for a probe value give the prefix (join
    key names, value type), and a value's key is that, its UTF-8 length, its bytes; where the
    layout differs (older serialization versions), every key comes from Feast."""
    from feast.value_type import ValueType

    from personaops.online_publish import entity_keys

    def many(ids: list[str]) -> list[bytes]:
        return entity_keys(join_key, ValueType.STRING, np.array(ids, dtype=object), version)

    probe = "personaops-key-probe"
    feast_key = many([probe])[0]
    head = feast_key[: len(feast_key) - len(probe) - 4]
    if feast_key != head + len(probe).to_bytes(4, "little") + probe.encode():
        return (lambda value: many([value])[0]), many

    def one(value: str) -> bytes:
        raw = value.encode("utf-8")
        return head + len(raw).to_bytes(4, "little") + raw

    return one, many


class SqliteOnlineReader:
    """One feature view's rows read straight from Feast's SQLite online table: the rows and
    ValueProto bytes Feast's own `online_read` reads, without Feast's per-call request planning
    (about 10x less time per lookup; bench/serve.py). One read-only connection per thread."""

    def __init__(self, store, view_name: str):
        from feast.infra.online_stores.helpers import compute_table_id
        from feast.protos.feast.types.Value_pb2 import Value as ValueProto

        from personaops.online_publish import SqlitePublisher

        config = store.config
        view = store.get_feature_view(view_name)
        self.features = [f.name for f in view.features]
        self.join_key = view.entity_columns[0].name
        self.version = config.entity_key_serialization_version
        self.db = SqlitePublisher(store).db_path()
        table = compute_table_id(config.project, view, config.registry.enable_online_feature_view_versioning)
        self.sql = f'SELECT entity_key, feature_name, value FROM "{table.replace(chr(34), chr(34) * 2)}" WHERE entity_key IN '
        self._local = threading.local()
        self._parse = ValueProto.FromString
        self.key, self._keys = entity_key_builder(self.join_key, self.version)

    @staticmethod
    def supports(store) -> bool:
        from personaops.online_publish import PUBLISHERS, SqlitePublisher

        return PUBLISHERS.get(store.config.online_store.type) is SqlitePublisher and SqlitePublisher.supports(store.config)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30.0, check_same_thread=False)
            self._local.conn = conn
        return conn

    def read(self, ids: list[str]) -> list[dict | None]:
        """Feature values of each id (None where the table has no row for it), in order."""
        keys = [self.key(i) for i in ids] if len(ids) <= 64 else self._keys(ids)
        found: dict[bytes, dict] = {}
        try:
            rows = self._conn().execute(self.sql + "(" + ",".join("?" * len(keys)) + ")", keys).fetchall()
        except sqlite3.OperationalError as exc:  # no file or table yet: not ready (503), not a crash
            raise PipelineStateError(f"The online store {self.db} cannot be read ({exc}); publish personas with `personas run` first.") from None
        parse = self._parse
        for key, name, blob in rows:
            value = parse(blob)
            kind = value.WhichOneof("val")
            found.setdefault(key, {})[name] = None if kind is None or kind == "null_val" else getattr(value, kind)
        return [found.get(k) for k in keys]


class RedisOnlineReader:
    """One feature view's fields read straight from Feast's Redis layout (one hash per entity,
    fields mmh3("<view>:<feature>") holding ValueProto bytes): one HMGET per person, pipelined,
    the same bytes Feast's `online_read` gets, without its per-call request planning. One
    redis-py client per thread (a connection pool of its own)."""

    def __init__(self, store, view_name: str):
        from feast.infra.online_stores.helpers import _mmh3
        from feast.protos.feast.types.Value_pb2 import Value as ValueProto

        from personaops.online_publish import RedisPublisher

        publisher = RedisPublisher(store)
        view = store.get_feature_view(view_name)
        self.features = [f.name for f in view.features]
        self.fields = [_mmh3(f"{publisher.view_name(view)}:{name}") for name in self.features]
        self._project = store.config.project.encode("utf-8")
        # Reads run on the server's event loop: a Redis that does not answer fails them fast
        # (503) instead of stalling every request behind redis-py's retries.
        from personaops.online_publish import no_client_retries, redis_client

        connection = store.config.online_store.connection_string
        self._connect = lambda: redis_client(connection, socket_timeout=0.5, socket_connect_timeout=0.5, **no_client_retries())
        self._parse = ValueProto.FromString
        self._local = threading.local()
        self._entity_key, _ = entity_key_builder(view.entity_columns[0].name, store.config.entity_key_serialization_version)

    @staticmethod
    def supports(store) -> bool:
        from personaops.online_publish import PUBLISHERS, RedisPublisher

        return PUBLISHERS.get(store.config.online_store.type) is RedisPublisher and RedisPublisher.supports(store.config)

    def key(self, entity_value: str) -> bytes:
        """Feast's Redis key of one (string) entity value: serialized entity key + project."""
        return self._entity_key(entity_value) + self._project

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._connect()
        return client

    def read(self, ids: list[str]) -> list[dict | None]:
        """Feature values of each id (None where Redis holds none of the view's fields), in order."""
        from redis.exceptions import RedisError

        client = self._client()
        try:
            if len(ids) == 1:
                replies = [client.hmget(self.key(ids[0]), self.fields)]
            else:
                pipe = client.pipeline(transaction=False)
                for person_id in ids:
                    pipe.hmget(self.key(person_id), self.fields)
                replies = pipe.execute()
        except RedisError as exc:  # the online store is down: not ready (503), not a crash
            raise PipelineStateError(f"The Redis online store cannot be read ({type(exc).__name__}); start it (`infra/services.sh up redis`) and retry.") from None
        out: list[dict | None] = []
        parse = self._parse
        for blobs in replies:
            if all(b is None for b in blobs):
                out.append(None)
                continue
            values = {}
            for name, blob in zip(self.features, blobs):
                value = None if blob is None else parse(blob)
                kind = None if value is None else value.WhichOneof("val")
                values[name] = None if kind is None or kind == "null_val" else getattr(value, kind)
            out.append(values)
        return out


class FastPersonaRead:
    """ASGI middleware of `personas serve`: the ordinary answers of the two online lookups,
    `GET /persons/{id}/persona` and `POST /personas/lookup`, given without FastAPI's per-request
    dependency solving, body and parameter validation (about 3-6x less server CPU per request;
    bench/serve.py), with FastAPI's own bytes.

    It answers only what it can answer exactly as the FastAPI route would:
    - 200: a valid id (or, for the batch, a JSON object `{"person_ids": [...]}` with 1 to
      `api.max_lookup_ids` valid ids, sent as `application/json`), a Bearer token of a role that
      may read, a SQLite or Redis online store read directly; the body is serialized by the
      route's own response field (pydantic), so it is byte for byte the route's;
    - 404: a valid id of a person the online store has no persona for (the route's message);
    - 401: no or a malformed `Authorization` header, or an unknown token (the route's messages
      and `WWW-Authenticate: Bearer`); the token is compared with every configured token by
      `roles.token_role` (constant time), after the header is split as FastAPI's HTTPBearer does.
    Everything else — 403, 422 (malformed ids or bodies), 503 (a read that fails), other methods,
    routes and stores — goes on to the FastAPI app unchanged (a batch body already read is handed
    on as it came), so those answers and the OpenAPI document stay FastAPI's. A test compares
    every answer it gives with the FastAPI route's for the same request (status, headers, body).
    `scope["route"]` is set to the FastAPI route, so the metrics label the request alike."""

    PERSONA_PATH = "/persons/{person_id}/persona"
    LOOKUP_PATH = "/personas/lookup"

    def __init__(self, app, *, service, tokens: dict[str, str], router, id_pattern: str, on_found=None, on_missing=None, max_lookup_ids: int | None = None):
        import re

        from fastapi.security.utils import get_authorization_scheme_param
        from starlette.responses import JSONResponse

        from personaops import api, roles

        # Bound once: an import statement per request costs microseconds.
        self._split, self._json_response = get_authorization_scheme_param, JSONResponse
        self._missing, self._unknown, self._not_found = api.MISSING_TOKEN, api.UNKNOWN_TOKEN, api.no_persona_message
        self._token_role, self._allows = roles.token_role, roles.allows
        self.app = app
        self.service = service
        self.tokens = tokens
        self.router = router
        self.valid_id = re.compile(id_pattern.removeprefix("^").removesuffix("$")).fullmatch
        self.on_found = on_found  # called with the number of persons found (a counter's inc)
        self.on_missing = on_missing  # ... and with the number of batch ids not found
        self.max_lookup_ids = int(service.cfg.api.max_lookup_ids if max_lookup_ids is None else max_lookup_ids)
        self._routes: dict[str, Any] = {}

    def _route(self, path: str):
        route = self._routes.get(path)
        if route is None:
            route = self._routes[path] = next(r for r in self.router.routes if getattr(r, "path", None) == path)
        return route

    def _caller(self, headers) -> tuple[str | None, str | None]:
        """(role, None) of the caller, or (None, the 401 detail) as api.caller_role decides it."""
        if not self.tokens:  # --insecure-dev with no token configured: every caller is admin
            return "admin", None
        value = next((v for k, v in headers if k == b"authorization"), None)
        # starlette decodes header values as latin-1; HTTPBearer splits them like this.
        authorization = None if value is None else value.decode("latin-1")
        scheme, credentials = self._split(authorization)
        if not (authorization and scheme and credentials) or scheme.lower() != "bearer":
            return None, self._missing
        role = self._token_role(credentials, self.tokens)
        return (role, None) if role is not None else (None, self._unknown)

    @staticmethod
    async def _send(send, status: int, headers: list, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _ok(self, send, route, content) -> bool:
        """The route's 200 (FastAPI's response-model validation and JSON serialization); False
        when the content does not validate (the FastAPI route then answers)."""
        field = route.response_field
        value, errors = field.validate(content, {}, loc=("response",))
        if errors:
            return False
        body = field.serialize_json(
            value, include=route.response_model_include, exclude=route.response_model_exclude, by_alias=route.response_model_by_alias,
            exclude_unset=route.response_model_exclude_unset, exclude_defaults=route.response_model_exclude_defaults, exclude_none=route.response_model_exclude_none,
        )  # fmt: skip
        # The headers starlette's Response(content=body, media_type="application/json") sets, in its order.
        await self._send(send, route.status_code or 200, [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")], body)
        return True

    async def _error(self, send, status: int, detail: str) -> None:
        """An error answer as the app's handlers give it (JSONResponse {"detail": ...})."""
        response = self._json_response({"detail": detail}, status_code=status, headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)
        await self._send(send, response.status_code, response.raw_headers, response.body)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("root_path") or not self.service.reads_locally():
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        if method == "GET" and path.startswith("/persons/") and path.endswith("/persona"):
            return await self._persona(scope, receive, send, path[9:-8])
        if method == "POST" and path == self.LOOKUP_PATH:
            return await self._lookup(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _persona(self, scope, receive, send, person_id: str):
        if not person_id or "/" in person_id or not self.valid_id(person_id):
            return await self.app(scope, receive, send)
        role, refused = self._caller(scope.get("headers") or ())
        if refused is None and not self._allows(role, "reader"):  # 403: FastAPI's
            return await self.app(scope, receive, send)
        try:
            found = None if refused else self.service.personas_of([person_id])[0]
        except Exception:  # noqa: BLE001 - the FastAPI route reads again and answers (503, ...)
            return await self.app(scope, receive, send)
        route = self._route(self.PERSONA_PATH)
        scope["route"] = route
        if refused:
            return await self._error(send, 401, refused)
        if found is None:
            return await self._error(send, 404, self._not_found(person_id))
        if not await self._ok(send, route, found):
            scope.pop("route", None)
            return await self.app(scope, receive, send)
        if self.on_found is not None:
            self.on_found(1)

    async def _lookup(self, scope, receive, send):
        messages: list[dict] = []
        body = b""
        while True:  # the whole body (BodySizeLimit, outside, bounds it)
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break

        async def replay():  # the FastAPI app gets the body as it came
            return messages.pop(0) if messages else await receive()

        ids = self._lookup_ids(scope.get("headers") or (), body) if messages[-1]["type"] == "http.request" else None
        if ids is None:
            return await self.app(scope, replay, send)
        role, refused = self._caller(scope.get("headers") or ())
        if refused is None and not self._allows(role, "reader"):
            return await self.app(scope, replay, send)
        try:
            found = None if refused else self.service.personas_of(ids)
        except Exception:  # noqa: BLE001 - the FastAPI route reads again and answers (503, ...)
            return await self.app(scope, replay, send)
        route = self._route(self.LOOKUP_PATH)
        scope["route"] = route
        if refused:
            return await self._error(send, 401, refused)
        hits = [f for f in found if f is not None]
        if not await self._ok(send, route, {"personas": hits, "not_found": [p for p, f in zip(ids, found) if f is None]}):
            scope.pop("route", None)
            return await self.app(scope, replay, send)
        if self.on_found is not None:
            self.on_found(len(hits))
        if self.on_missing is not None:
            self.on_missing(len(ids) - len(hits))

    def _lookup_ids(self, headers, body: bytes) -> list[str] | None:
        """The distinct ids of an ordinary batch body, in order; None for anything FastAPI would
        treat otherwise (another content type, bad JSON, extra fields, bad or too many ids)."""
        content_type = next((v for k, v in headers if k == b"content-type"), None)
        if content_type is None or not (content_type == b"application/json" or content_type.startswith(b"application/json;")) or not body:
            return None
        try:
            request = json.loads(body)
        except ValueError:
            return None
        if type(request) is not dict or len(request) != 1:
            return None
        ids = request.get("person_ids")
        if type(ids) is not list or not 1 <= len(ids) <= self.max_lookup_ids:
            return None
        valid = self.valid_id
        if not all(type(i) is str and valid(i) for i in ids):
            return None
        return list(dict.fromkeys(ids))
