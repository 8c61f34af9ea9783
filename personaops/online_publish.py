"""Publishing a feature view's rows to Feast's online store: batched, and atomic per publish.

Feast's `write_to_online_store` upserts one SQL statement per feature value. For the SQLite
online store we write exactly the rows Feast would write — Feast's table layout, entity keys
from `serialize_entity_key`, values as Feast `ValueProto` bytes — into a fresh table (each column
bound as one blob per slice of persons, cut into one row per feature value by SQLite itself, in
primary key order) that replaces the view's table by DROP + RENAME in the same transaction: a reader sees
the previous publish or this one, never a mix, and persons absent from this publish are gone.
Stock Feast readers (`get_online_features`, `feast serve`) and `feast apply` work unchanged.

For the Redis online store (profile: production) we write exactly Feast's Redis layout — one
hash per entity (`serialize_entity_key` + project), fields `mmh3("<view>:<feature>")` holding
`ValueProto` bytes and `_ts:<view>` holding the event time as a protobuf `Timestamp` — with one
HSET per person carrying all of the view's fields, batched into server-side scripts (one
round trip per few thousand persons). Each person's fields change in one atomic command, so a
reader never sees two model versions mixed for one person; the view's fields are then removed
from persons absent from this publish, using the list of published entity keys kept beside them.

Other online store types go through Feast's own `write_to_online_store`, which upserts:
persons absent from the publish keep their old rows.

Pushed events (personaops.serving) use the same publishers' `update_entity`: one person's rows
read and rewritten in one SQLite transaction, or one WATCH/MULTI update of the person's hash.
"""

from __future__ import annotations

import itertools
import sqlite3
import struct
import uuid
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np
import pandas as pd

from personaops.errors import PipelineStateError
from personaops.retry import RetryLog, RetryPolicy, call_with_retries, redis_retryable

# Columns of Feast 0.67's SQLite online table that a publish fills (vector_value stays NULL).
_SQLITE_COLUMNS = ("entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts")
_SQLITE_TABLE_COLUMNS = {"entity_key", "feature_name", "value", "value_text", "vector_value", "event_ts", "created_ts"}
# Feast's declaration of that table (SqliteOnlineStore.update), so its readers parse it alike.
_SQLITE_TABLE_SQL = "entity_key BLOB, feature_name TEXT, value BLOB, value_text TEXT, vector_value BLOB, event_ts timestamp, created_ts timestamp, PRIMARY KEY(entity_key, feature_name)"
# A publish builds the new table under the view's table name + this suffix, then renames it.
_BUILD_SUFFIX = "__personaops_build"
# A feature with at most 1/this distinct values per row is kept as its distinct values (each
# serialized once) and each row's index into them (SqliteRows.codes).
_CODED_MAX_SHARE = 4
# Above this many distinct values, fixed-width numbers are encoded by the layout Feast's own
# serialization of a sample value shows, instead of one ValueProto per distinct value.
_DISTINCT_VALUES_VIA_PROTO = 2_000
# A publish encodes and inserts this many persons at a time: SQLite inserts one slice (without
# Python's lock) while the next is encoded, so the two overlap on a second core.
_SLICE_PERSONS = 16_384
# Changes-only publish (publishing_changes_only): beside Feast's tables, the table
# personaops_online_state holds, per view table, the id of the publish its content equals; a
# snapshot of each person's row hash under that id lives next to the database. Above this share of
# persons changed (or removed), a full rebuild is cheaper than writing the changes.
_STATE_TABLE = "personaops_online_state"
_SNAPSHOT_DIR = "personaops_published"
_CHANGES_MAX_SHARE = 0.3
_CHANGES_ONLY: ContextVar["dict | None"] = ContextVar("personaops_changes_only", default=None)


@contextmanager
def publishing_changes_only() -> Iterator[dict]:
    """Within this block, SQLite publishes of a view write only the persons whose row changed
    since the view's last publish (and delete the persons gone from it), in one transaction, when
    the online table still holds exactly that publish; otherwise, and when more than 30% of the
    persons changed, they rebuild the table as usual. Yields {view: what each publish did}."""
    report: dict = {}
    token = _CHANGES_ONLY.set(report)
    try:
        yield report
    finally:
        _CHANGES_ONLY.reset(token)


@dataclass
class OnlineEntity:
    """What the online store holds for one entity in one feature view: feature values (Python
    values, None where missing) and the row's event time (UTC; None where the store gives none)."""

    values: dict[str, Any]
    event_time: pd.Timestamp | None = None


# compute(current rows by view name, None where the entity has none) -> (rows to write by view
# name, in write order; a result handed back to the caller)
EntityUpdate = Callable[[dict[str, "OnlineEntity | None"]], "tuple[dict[str, pd.DataFrame], Any]"]


class OnlinePublisher(Protocol):
    """Writes feature view rows (entity columns, features, timestamps) to the online store."""

    def replace(self, view_name: str, rows: pd.DataFrame) -> int:
        """Publish `rows` as the view's online content; return the number of entity rows written."""

    def update_entity(self, entity_value: str, read_views: list[str], compute: EntityUpdate) -> Any:
        """Read one entity's rows of `read_views`, write the rows `compute` derives from them (any
        views), and return compute's result; the read and the write are one atomic step where the
        store allows it, so concurrent updates of one entity add up."""


@dataclass
class FeastWritePublisher:
    """Any online store Feast supports, through Feast's `write_to_online_store` (an upsert)."""

    store: object

    def replace(self, view_name: str, rows: pd.DataFrame) -> int:
        self.store.write_to_online_store(view_name, rows.reset_index(drop=True))
        return len(rows)

    def update_entity(self, entity_value: str, read_views: list[str], compute: EntityUpdate) -> Any:
        """Feast's read and upserts, view after view in compute's order: not atomic across views,
        and Feast's online read returns no event times (event_time None)."""
        current: dict[str, OnlineEntity | None] = {}
        for name in read_views:
            view = _cached_view(self.store, name)
            got = self.store.get_online_features(features=[f"{name}:{f.name}" for f in view.features], entity_rows=[{view.entity_columns[0].name: entity_value}]).to_dict()
            values = {f.name: got[f.name][0] for f in view.features}
            current[name] = OnlineEntity(values) if any(v is not None for v in values.values()) else None
        frames, result = compute(current)
        for name, frame in frames.items():
            self.store.write_to_online_store(name, frame.reset_index(drop=True))
        return result


@dataclass
class SqlitePublisher:
    """Feast's SQLite online store: a view's table rebuilt and swapped in by one transaction."""

    store: object
    busy_timeout_s: float = 30.0

    @staticmethod
    def supports(config) -> bool:
        """Plain SQLite online stores only: vector and OpenAI-compatible tables have extra columns."""
        online = config.online_store
        return not getattr(online, "vector_enabled", False) and not getattr(online, "enable_openai_compatible_store", False)

    def db_path(self) -> Path:
        config = self.store.config
        path = Path(config.online_store.path)
        # Feast resolves a relative online store path against the repo (SqliteOnlineStore._get_db_path).
        return path if path.is_absolute() or not config.repo_path else Path(config.repo_path) / path

    def table_name(self, view) -> str:
        from feast.infra.online_stores.helpers import compute_table_id

        config = self.store.config
        return compute_table_id(config.project, view, config.registry.enable_online_feature_view_versioning)

    def encode(self, view, rows: pd.DataFrame) -> SqliteRows:
        """The SQLite rows Feast's online_write_batch would write for `rows`, sorted by primary key."""
        return encode_sqlite_rows(view, rows, self.store.config.entity_key_serialization_version)

    def replace(self, view_name: str, rows: pd.DataFrame) -> int:
        view = self.store.get_feature_view(view_name)
        table = self.table_name(view)
        report = _CHANGES_ONLY.get()
        snapshot = _RowSnapshot.of(view, rows) if report is not None else None
        if snapshot is not None:
            done = self._write_changes(view, table, rows, snapshot)
            if done is not None:
                report[view_name] = done
                return len(rows)
        epoch = uuid.uuid4().hex
        slices = iter_sqlite_rows(view, rows, self.store.config.entity_key_serialization_version)
        write_sqlite_table(self.db_path(), table, slices, self.busy_timeout_s, expected_values=len(rows) * len(view.features), epoch=epoch)
        if snapshot is not None:
            snapshot.save(self.snapshot_path(table), epoch)
            report[view_name] = {"mode": "full", "persons_written": len(rows), "persons_removed": None}
        return len(rows)

    def snapshot_path(self, table: str) -> Path:
        """Row hashes of the view's last changes-only-capable publish, next to the database."""
        return self.db_path().parent / _SNAPSHOT_DIR / f"{table}.parquet"

    def _write_changes(self, view, table: str, rows: pd.DataFrame, snapshot: "_RowSnapshot") -> dict | None:
        """Write only the persons whose row differs from the last publish's snapshot; None when
        that is not possible (no snapshot, the table changed since, too many changes)."""
        previous = _RowSnapshot.load(self.snapshot_path(table))
        if previous is None or previous.columns != snapshot.columns:
            return None
        changed, removed = snapshot.changes_from(previous)
        if len(changed) + len(removed) > _CHANGES_MAX_SHARE * max(len(rows), 1):
            return None
        encoded = self.encode(view, rows.iloc[changed])
        join = view.entity_columns[0]
        gone = entity_keys(join.name, join.dtype.to_value_type(), np.asarray(removed, dtype=object), self.store.config.entity_key_serialization_version)
        epoch = uuid.uuid4().hex
        if not write_sqlite_changes(self.db_path(), table, encoded, gone, previous.epoch, epoch, self.busy_timeout_s):
            return None
        snapshot.save(self.snapshot_path(table), epoch)
        return {"mode": "changes", "persons_written": len(changed), "persons_removed": len(removed)}

    def update_entity(self, entity_value: str, read_views: list[str], compute: EntityUpdate) -> Any:
        """One SQLite transaction (BEGIN IMMEDIATE: writers queue, readers read on): read the
        entity's rows, then replace its rows in every view compute returns."""
        views = {name: _cached_view(self.store, name) for name in read_views}
        version = self.store.config.entity_key_serialization_version
        conn = sqlite3.connect(self.db_path(), timeout=self.busy_timeout_s, isolation_level=None)
        try:
            with _immediate(conn):
                current: dict[str, OnlineEntity | None] = {}
                for name, view in views.items():
                    key = entity_keys(view.entity_columns[0].name, view.entity_columns[0].dtype.to_value_type(), np.array([entity_value], dtype=object), version)[0]
                    held = conn.execute(f"SELECT feature_name, value, event_ts FROM {_quote(self.table_name(view))} WHERE entity_key = ?", (key,)).fetchall()
                    current[name] = OnlineEntity({f: python_value(blob) for f, blob, _ in held}, _sqlite_time(held[0][2])) if held else None
                frames, result = compute(current)
                for name, frame in frames.items():
                    view = views.get(name) or _cached_view(self.store, name)
                    table = _quote(self.table_name(view))
                    encoded = self.encode(view, frame)
                    _forget_state(conn, self.table_name(view))  # the table no longer equals a publish
                    conn.executemany(f"DELETE FROM {table} WHERE entity_key = ?", [(k,) for k in dict.fromkeys(encoded.keys)])
                    conn.executemany(f"INSERT OR REPLACE INTO {table} ({', '.join(_SQLITE_COLUMNS)}) VALUES ({', '.join('?' * len(_SQLITE_COLUMNS))})", encoded.tuples())
        finally:
            conn.close()
        return result


@dataclass
class RedisPublisher:
    """Feast's Redis online store (a single Redis server), written in Feast's own layout: one
    HSET per person holding all of the view's fields, pipelined in batches."""

    store: object = field(repr=False)  # its config holds connection strings with passwords
    batch_persons: int = 5_000
    retry_policy: "RetryPolicy | None" = None  # None: personaops.retry's environment defaults
    retries: "RetryLog | None" = None  # attempts and seconds of the last replace()

    @staticmethod
    def supports(config) -> bool:
        """A plain Redis server (not cluster or sentinel, whose keys spread over nodes)."""
        return str(getattr(config.online_store, "redis_type", "redis")).rsplit(".", 1)[-1] == "redis"

    def client(self):
        """A redis-py client from Feast's `connection_string` (host:port,key=value,...)."""
        return redis_client(self.store.config.online_store.connection_string)

    def view_name(self, view) -> str:
        from feast.infra.online_stores.helpers import compute_versioned_name

        return compute_versioned_name(view, self.store.config.registry.enable_online_feature_view_versioning)

    def members_key(self, view) -> bytes:
        """The Redis key listing the entity keys of the view's last publish (beside Feast's hashes)."""
        return f"personaops:online_members:{self.store.config.project}:{self.view_name(view)}".encode()

    def encode(self, view, rows: pd.DataFrame) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """(Redis keys, field names, values person-major) that Feast's online_write_batch writes for `rows`."""
        return encode_redis_hashes(view, rows, self.store.config.project, self.view_name(view), self.store.config.entity_key_serialization_version)

    def encode_sliced(self, view, rows: pd.DataFrame) -> tuple[list[bytes], list[bytes], "_ValuesBySlice"]:
        """`encode`'s keys and fields, and its values as `_ValuesBySlice` (encoded per slice of persons)."""
        _, fields, _ = encode_redis_hashes(view, rows.iloc[:0], self.store.config.project, self.view_name(view), self.store.config.entity_key_serialization_version)  # checks view and columns
        keys = redis_keys(view, rows, self.store.config.project, self.store.config.entity_key_serialization_version)
        size = max(self.batch_persons, (_ENCODE_PERSONS // self.batch_persons) * self.batch_persons)
        return keys, fields, _ValuesBySlice(view, rows.reset_index(drop=True), size)

    def update_entity(self, entity_value: str, read_views: list[str], compute: EntityUpdate) -> Any:
        """One WATCH/MULTI transaction on the entity's hash: every view's fields of one person
        change in one HSET, and a concurrent change makes the read and compute run again."""
        return _redis_update_entity(self, entity_value, read_views, compute)

    def replace(self, view_name: str, rows: pd.DataFrame) -> int:
        view = self.store.get_feature_view(view_name)
        keys, fields, values = self.encode_sliced(view, rows)
        ttl = int(self.store.config.online_store.key_ttl_seconds or 0)

        def attempt() -> None:
            # A whole publish per attempt: HSETs are idempotent, and the keys of an interrupted
            # attempt are listed at members_key:next, so the retry also cleans up after it.
            # redis-py's own retries are off here: ours are the only ones, so the bound holds.
            client = redis_client(self.store.config.online_store.connection_string, **no_client_retries())
            try:
                write_redis_hashes(client, self.members_key(view), keys, fields, values, ttl, self.batch_persons)
            finally:
                client.close()

        host = self.store.config.online_store.connection_string.split(",", 1)[0]
        self.retries = RetryLog()
        call_with_retries(attempt, f"Redis (the online store) at {host}", "every person online holds one whole publish (the previous one or this one, never a mix); start Redis (`infra/services.sh up redis`) and publish again with `personas run`.", redis_retryable(), self.retry_policy, self.retries)
        return len(rows)


def _redis_update_entity(publisher: "RedisPublisher", entity_value: str, read_views: list[str], compute: EntityUpdate) -> Any:
    """RedisPublisher.update_entity: WATCH the entity's hash, read the views' fields (HMGET), then
    MULTI/EXEC one HSET with every field compute returns (all views of one entity share Feast's
    one hash); a concurrent change of the hash makes redis-py re-run the read and compute."""
    from feast.infra.online_stores.helpers import _mmh3
    from google.protobuf.timestamp_pb2 import Timestamp

    store = publisher.store
    project, version = store.config.project, store.config.entity_key_serialization_version
    views = {name: _cached_view(store, name) for name in read_views}
    first = next(iter(views.values()))
    key = entity_keys(first.entity_columns[0].name, first.entity_columns[0].dtype.to_value_type(), np.array([entity_value], dtype=object), version)[0] + project.encode("utf-8")
    ttl = int(store.config.online_store.key_ttl_seconds or 0)

    def attempt(pipe) -> Any:
        current: dict[str, OnlineEntity | None] = {}
        for name, view in views.items():
            vname = publisher.view_name(view)
            got = pipe.hmget(key, [_mmh3(f"{vname}:{f.name}") for f in view.features] + [f"_ts:{vname}".encode()])
            if all(v is None for v in got[:-1]):
                current[name] = None
                continue
            when = None
            if got[-1] is not None:
                stamp = Timestamp()
                stamp.ParseFromString(got[-1])
                when = pd.Timestamp(stamp.ToDatetime()).tz_localize("UTC")
            current[name] = OnlineEntity({f.name: python_value(v) for f, v in zip(view.features, got)}, when)
        frames, result = compute(current)
        mappings: dict[bytes, dict[bytes, bytes]] = {}
        for name, frame in frames.items():
            view = views.get(name) or _cached_view(store, name)
            keys, fields, values = publisher.encode(view, frame)
            for i, k in enumerate(keys):
                mappings.setdefault(k, {}).update(zip(fields, values[i * len(fields) : (i + 1) * len(fields)]))
        pipe.multi()
        for k, mapping in mappings.items():
            pipe.hset(k, mapping=mapping)
            if ttl:
                pipe.expire(k, ttl)
        return result

    client = publisher.client()
    try:
        return client.transaction(attempt, key, value_from_callable=True)
    finally:
        client.close()


# Online store type (feature_store.yaml `online_store.type`) -> fast publisher.
PUBLISHERS = {
    "sqlite": SqlitePublisher,
    "feast.infra.online_stores.sqlite.SqliteOnlineStore": SqlitePublisher,
    "redis": RedisPublisher,
    "feast.infra.online_stores.redis.RedisOnlineStore": RedisPublisher,
}


def online_publisher(store) -> OnlinePublisher:
    """The fastest publisher for this FeatureStore's online store; Feast's own write otherwise."""
    cls = PUBLISHERS.get(store.config.online_store.type)
    if cls is not None and cls.supports(store.config):
        return cls(store)
    return FeastWritePublisher(store)


def _cached_view(store, name: str):
    """A feature view from Feast's cached registry (refreshed every cache_ttl_seconds): per-person
    updates run per request, and an uncached lookup re-reads the whole registry."""
    return store.get_feature_view(name, allow_registry_cache=True)


# --- encoding: Feast's serialization, once per distinct value ----------------------------------
def python_value(blob: bytes | None):
    """The Python value of a stored Feast ValueProto (None for no value)."""
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto
    from feast.type_map import feast_value_type_to_python_type

    return None if blob is None else feast_value_type_to_python_type(ValueProto.FromString(blob))


def _sqlite_time(value) -> pd.Timestamp | None:
    """An event_ts of Feast's SQLite table (epoch seconds, or an ISO text) as a UTC timestamp."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return pd.Timestamp(value, unit="s", tz="UTC")
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def entity_keys(join_key: str, value_type, values: np.ndarray, version: int) -> list[bytes]:
    """`serialize_entity_key` of each value of a single join key (bytes, one per value)."""
    from feast.infra.key_encoding_utils import serialize_entity_key, serialize_entity_key_prefix
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    def feast_key(value) -> bytes:
        proto = python_values_to_proto_values(np.array([value], dtype=object), value_type)[0]
        return serialize_entity_key(EntityKeyProto(join_keys=[join_key], entity_values=[proto]), entity_key_serialization_version=version)

    if len(values) == 0:
        return []
    if value_type == ValueType.STRING and version >= 3:
        # v3 layout: key names (Feast's prefix helper), then value type, value length, UTF-8 bytes.
        head = serialize_entity_key_prefix([join_key], version) + struct.pack("<I", ValueType.STRING.value)
        pack = struct.Struct("<I").pack
        texts = values.tolist()
        try:
            encoded = list(map(str.encode, texts))
        except TypeError:  # not all strings: Feast's proto conversion takes str() of each
            encoded = [str(v).encode("utf8") for v in texts]
        keys = list(map(b"".join, zip(itertools.repeat(head), map(pack, map(len, encoded)), encoded)))
        if keys[0] == feast_key(values[0]) and keys[-1] == feast_key(values[-1]):
            return keys
    return [feast_key(v) for v in values]


def feature_value_table(values: np.ndarray, value_type) -> tuple[np.ndarray | None, list[bytes], list[str | None]]:
    """(codes, serialized ValueProtos, value_texts) of `values` as Feast's SQLite store writes them:
    one ValueProto per distinct value and each value's index into them (codes), or, for many
    distinct numbers, one ValueProto per value (codes None)."""
    from feast.infra.online_stores.helpers import extract_text_and_num
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    fixed = {ValueType.DOUBLE: ("double_val", "<f8", float), ValueType.INT64: ("int64_val", "<i8", int)}
    if len(uniques) > _DISTINCT_VALUES_VIA_PROTO and value_type in fixed and values.dtype.kind in "fiu":
        encoded = _fixed_width_values(values, *fixed[value_type], ValueProto, python_values_to_proto_values, value_type)
        if encoded is not None:
            return None, *encoded
    protos = python_values_to_proto_values(np.asarray(uniques, dtype=values.dtype if values.dtype.kind in "fiub" else object), value_type)
    return codes, [p.SerializeToString() for p in protos], [extract_text_and_num(p, False)[0] for p in protos]


def feature_values(values: np.ndarray, value_type) -> tuple[list[bytes], list[str | None]]:
    """(serialized ValueProto, value_text) of each value, as Feast's SQLite store writes them."""
    codes, blobs, texts = feature_value_table(values, value_type)
    if codes is None:
        return blobs, texts
    return np.array(blobs, dtype=object)[codes].tolist(), np.array(texts, dtype=object)[codes].tolist()


def _fixed_width_values(values, field, dtype, cast, ValueProto, to_protos, value_type):
    """Bytes of many distinct numbers: Feast's tag bytes + the little-endian number, checked
    against Feast's own serialization of a sample; None when the layout does not match."""
    tag = ValueProto(**{field: cast(1)}).SerializeToString()[: -np.dtype(dtype).itemsize]
    missing = pd.isna(values)
    numbers = np.where(missing, 0, values).astype(dtype)
    width = len(tag) + numbers.dtype.itemsize
    buf = np.empty(len(numbers), dtype=[("tag", f"S{len(tag)}"), ("value", dtype)])
    buf["tag"], buf["value"] = tag, numbers
    raw = buf.tobytes()
    blobs = [raw[i : i + width] for i in range(0, len(raw), width)]
    texts = [str(v) for v in numbers.tolist()]
    for i in np.flatnonzero(missing):
        blobs[i], texts[i] = ValueProto().SerializeToString(), None
    probe = [i for i in (0, len(values) // 2, len(values) - 1) if not missing[i]]
    feast = to_protos(values[probe], value_type)
    if any(blobs[i] != p.SerializeToString() for i, p in zip(probe, feast)):
        return None
    return blobs, texts


def _epoch_seconds(stamps: pd.Series) -> list[int]:
    """Timestamps as Feast's SQLite store stores them: naive UTC, adapted to whole epoch seconds."""
    import pyarrow as pa
    from feast.utils import _coerce_datetime, to_naive_utc

    codes, uniques = pd.factorize(stamps, use_na_sentinel=False)
    as_feast = pd.to_datetime(pa.array(pd.Series(uniques, dtype=stamps.dtype)).to_numpy(zero_copy_only=False))
    seconds = np.array([int(to_naive_utc(_coerce_datetime(t)).timestamp()) for t in as_feast], dtype=object)
    return seconds[codes].tolist()


@dataclass
class SqliteRows:
    """The rows of a Feast SQLite online table for a batch of entity rows, held column-wise: one
    entry per entity row (sorted by serialized entity key; duplicates keep their order) and per
    feature (sorted by name), so a writer binds one row per person, not one per feature value.

    A feature's values are either one ValueProto per entity row (`codes[j]` None) or one per
    distinct value with each row's index into them (`codes[j]`)."""

    keys: list[bytes]
    features: list[str]
    values: list[list[bytes]]
    texts: list[list[str | None]]
    codes: list[list[int] | None]
    event_ts: list[int]
    created_ts: list[int | None]

    def __len__(self) -> int:
        return len(self.keys) * len(self.features)

    def tuples(self) -> Iterator[tuple]:
        """(entity_key, feature_name, value, value_text, event_ts, created_ts) in primary key order."""
        per_feature = []
        for name, values, texts, codes in zip(self.features, self.values, self.texts, self.codes):
            if codes is not None:
                values, texts = [values[c] for c in codes], [texts[c] for c in codes]
            per_feature.append(zip(self.keys, itertools.repeat(name), values, texts, self.event_ts, self.created_ts))
        return itertools.chain.from_iterable(zip(*per_feature))


def encode_sqlite_rows(view, rows: pd.DataFrame, entity_key_serialization_version: int) -> SqliteRows:
    """The rows of a SQLite online table for `rows` of a feature view (byte for byte what Feast's
    online_write_batch writes), column-wise and sorted by primary key (entity_key, feature_name)."""
    return next(iter_sqlite_rows(view, rows, entity_key_serialization_version, None))


def iter_sqlite_rows(view, rows: pd.DataFrame, entity_key_serialization_version: int, slice_persons: int | None = _SLICE_PERSONS) -> Iterator[SqliteRows]:
    """encode_sqlite_rows, slice after slice of at most `slice_persons` entity rows (None: one
    slice) in primary key order: keys are serialized and sorted for all rows first, feature values
    encoded lazily per slice, so a writer can insert one slice while the next is encoded."""
    import pyarrow as pa

    join = [(c.name, c.dtype.to_value_type()) for c in view.entity_columns]
    if len(join) != 1:
        raise PipelineStateError(f"Feature view '{view.name}' has {len(join)} join keys; the fast SQLite publish handles one, so publish it with Feast's write_to_online_store.")
    features = sorted((f.name, f.dtype.to_value_type()) for f in view.features)
    missing = [c for c in [join[0][0], *(f for f, _ in features), view.batch_source.timestamp_field] if c not in rows.columns]
    if missing:
        raise PipelineStateError(f"Rows for feature view '{view.name}' lack column '{missing[0]}'; add it before publishing.")
    # The same Arrow -> NumPy conversion Feast applies before serializing.
    table = pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False)
    keys = entity_keys(join[0][0], join[0][1], table.column(join[0][0]).to_numpy(zero_copy_only=False), entity_key_serialization_version)
    taken = np.asarray(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)  # stable: duplicates keep their order
    # Every column in primary key order before encoding (Arrow's and pandas' take, in C).
    table = table.take(pa.array(taken))
    stamps = lambda name: _epoch_seconds(rows[name].reset_index(drop=True).take(taken).reset_index(drop=True))  # noqa: E731
    created_col = view.batch_source.created_timestamp_column
    created_ts = stamps(created_col) if created_col and created_col in rows.columns else [None] * len(rows)
    event_ts = stamps(view.batch_source.timestamp_field)
    keys = np.array(keys, dtype=object)[taken].tolist()
    step = max(1, slice_persons or len(keys))
    for start in range(0, max(len(keys), 1), step):
        part = table.slice(start, step)
        out = SqliteRows(keys[start : start + step], [name for name, _ in features], [], [], [], event_ts[start : start + step], created_ts[start : start + step])
        for name, value_type in features:
            codes, blobs, texts = feature_value_table(part.column(name).to_numpy(zero_copy_only=False), value_type)
            # Few distinct values (ids, names, versions): bind a small integer per row, not the bytes.
            if codes is not None and len(blobs) * _CODED_MAX_SHARE <= len(out.keys):
                out.values.append(blobs), out.texts.append(texts), out.codes.append(codes.tolist())
            else:
                if codes is not None:
                    blobs, texts = np.array(blobs, dtype=object)[codes].tolist(), np.array(texts, dtype=object)[codes].tolist()
                out.values.append(blobs), out.texts.append(texts), out.codes.append(None)
        yield out


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _insert_sqlite_rows(conn: sqlite3.Connection, quoted_table: str, rows: SqliteRows) -> None:
    """INSERT OR REPLACE `rows` into a table in one statement that SQLite expands itself: each
    column arrives as one bound blob (its values concatenated) and SQLite cuts each person's
    value out of it, row by row in primary key order. No Python work per value or per person."""
    _insert_sqlite_slices(conn, quoted_table, [rows])


def _insert_sqlite_slices(conn: sqlite3.Connection, quoted_table: str, slices) -> None:
    """_insert_sqlite_rows of each slice in turn (slices in primary key order). Each slice's
    statement — SQLite's own row-by-row insert, which runs without Python's lock — runs in a
    second thread while this one encodes and packs the next slice (when `slices` is a lazy
    iterator), so on two cores the encoding and SQLite's insert overlap; the statements stay in
    order on the one connection (it needs check_same_thread=False for that)."""
    from concurrent.futures import ThreadPoolExecutor

    lazy = not isinstance(slices, (list, tuple))  # slices already encoded: nothing to overlap
    pool: ThreadPoolExecutor | None = None
    pending = None
    try:
        for rows in slices:  # a lazy iterator encodes the next slice here, while `pending` runs
            statement = _packed_insert(quoted_table, rows)  # packed while `pending` runs, too
            if pending is not None:
                pending.result()
                pending = None
            if statement is None:
                continue
            if not lazy:
                conn.execute(*statement)
                continue
            if pool is None:
                pool = ThreadPoolExecutor(1, thread_name_prefix="personaops-publish")
            pending = pool.submit(conn.execute, *statement)
        if pending is not None:
            pending.result()
            pending = None
    finally:
        if pending is not None:  # an error while encoding: let the running statement finish first
            try:
                pending.result()
            except Exception:  # noqa: BLE001 - the first error is the one raised
                pass
        if pool is not None:
            pool.shutdown(wait=True)


def _digits(numbers: np.ndarray) -> tuple[bytes, int]:
    """Non-negative integers as one ASCII string of fixed-width decimal fields: (bytes, width)."""
    width = len(str(int(numbers.max()))) if len(numbers) else 1
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((numbers[:, None] // powers) % 10 + 48).astype(np.uint8).tobytes(), width


class _Packer:
    """The bound parameters and SQL expressions of one packed INSERT (see _packed_insert)."""

    def __init__(self, person: str) -> None:
        self.params: dict[str, Any] = {}
        self.person = person  # the SQL expression of the current row's person (0-based)

    def bind(self, value) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    def pieces(self, pieces: list, as_text: bool) -> str:
        """The SQL expression of the row's piece of `pieces` (bytes, or str when `as_text`; None
        for NULL): every piece concatenated into one blob, cut out by offset and length (or by
        position alone when all have one length)."""
        n, i = len(pieces), self.person
        nulls = None
        if None in pieces:
            missing = np.fromiter((p is None for p in pieces), dtype=bool, count=n)
            nulls = np.where(missing, 49, 48).astype(np.uint8).tobytes()  # b"1": NULL
            empty = "" if as_text else b""
            pieces = [empty if p is None else p for p in pieces]
        if as_text:
            joined_text = "".join(pieces)
            blob = joined_text.encode("utf-8")
            if len(blob) == len(joined_text):  # ASCII: a character is a byte
                lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=n)
            else:
                encoded = [p.encode("utf-8") for p in pieces]
                lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=n)
        else:
            blob = b"".join(pieces)
            lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=n)
        name = self.bind(blob)
        width = int(lengths[0]) if n else 0
        if n and (lengths == width).all():
            expr = f"substr({name}, {i} * {width} + 1, {width})"
        else:
            starts, sw = _digits(np.cumsum(lengths) - lengths)
            sizes, lw = _digits(lengths)
            s, l = self.bind(starts), self.bind(sizes)
            expr = f"substr({name}, CAST(substr({s}, {i} * {sw} + 1, {sw}) AS INTEGER) + 1, CAST(substr({l}, {i} * {lw} + 1, {lw}) AS INTEGER))"
        if as_text:
            expr = f"CAST({expr} AS TEXT)"
        if nulls is not None:
            expr = f"CASE WHEN substr({self.bind(nulls)}, {i} + 1, 1) = X'31' THEN NULL ELSE {expr} END"
        return expr

    def coded(self, uniques: list, codes: np.ndarray, as_text: bool) -> str:
        """pieces() of `uniques` taken at `codes`; when every unique value has one length (ids,
        names, versions), the concatenation is one NumPy take, not a Python join per row."""
        encoded = [u.encode("utf-8") if as_text and u is not None else u for u in uniques]
        width = len(encoded[0]) if encoded and encoded[0] is not None else -1
        if width <= 0 or any(e is None or len(e) != width for e in encoded):
            return self.pieces(np.array(uniques, dtype=object)[codes].tolist(), as_text)
        blob = np.frombuffer(b"".join(encoded), dtype=f"V{width}")[codes].tobytes()
        expr = f"substr({self.bind(blob)}, {self.person} * {width} + 1, {width})"
        return f"CAST({expr} AS TEXT)" if as_text else expr

    def integers(self, values: list) -> str:
        """The SQL expression of the row's integer of `values` (ints or None), bound once when constant."""
        first = values[0]
        if values.count(first) == len(values) and (first is None or None not in values):
            return self.bind(first)
        if None in values or min(values) < 0:
            return f"CAST({self.pieces([None if v is None else str(v) for v in values], True)} AS INTEGER)"
        digits, width = _digits(np.asarray(values, dtype=np.int64))
        return f"CAST(substr({self.bind(digits)}, {self.person} * {width} + 1, {width}) AS INTEGER)"


def _packed_insert(quoted_table: str, rows: SqliteRows) -> tuple[str, dict] | None:
    """One INSERT OR REPLACE statement and its parameters that write `rows` (one row per entity
    row and feature, in primary key order; a later duplicate of an entity replaces the earlier):
    a recursive CTE counts the entity rows, crossed with the features, and each column's value is
    cut out of one bound blob, so the expansion runs in SQLite's C code without Python's lock."""
    nf, n = len(rows.features), len(rows.keys)
    if not n or not nf:
        return None
    pack = _Packer("n.x")
    key = pack.pieces(rows.keys, False)
    names, values, texts = [], [], []
    for j, (name, blobs, words, codes) in enumerate(zip(rows.features, rows.values, rows.texts, rows.codes)):
        names.append(f"({j}, {pack.bind(name)})")
        if codes is None:
            values.append(f"WHEN {j} THEN {pack.pieces(blobs, False)}")
            texts.append(f"WHEN {j} THEN {pack.pieces(words, True)}")
        else:
            taken = np.asarray(codes, dtype=np.int64)
            values.append(f"WHEN {j} THEN {pack.coded(blobs, taken, False)}")
            texts.append(f"WHEN {j} THEN {pack.coded(words, taken, True)}")
    event, created = pack.integers(rows.event_ts), pack.integers(rows.created_ts)
    count = pack.bind(n)
    # CROSS JOIN fixes the loop order (entity rows outside, features inside, both ascending):
    # rows arrive in primary key order, so the b-tree appends and a later duplicate wins.
    sql = (
        f"INSERT OR REPLACE INTO {quoted_table} ({', '.join(_SQLITE_COLUMNS)}) "
        f"WITH RECURSIVE n(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM n LIMIT {count}), f(j, name) AS (VALUES {', '.join(names)}) "
        f"SELECT {key}, f.name, CASE f.j {' '.join(values)} END, CASE f.j {' '.join(texts)} END, {event}, {created} "
        f"FROM n CROSS JOIN f"
    )
    return sql, pack.params


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction (BEGIN IMMEDIATE: writers queue, readers read on), committed at the
    end of the block and rolled back on any error, so readers never see part of it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def write_sqlite_table(db_path: Path, table: str, rows: "SqliteRows | Iterable[SqliteRows]", busy_timeout_s: float = 30.0, expected_values: int = 0, epoch: str | None = None) -> None:
    """Replace a Feast SQLite online table by one holding exactly `rows`, in one transaction.
    `rows` may also be slices in primary key order (iter_sqlite_rows; `expected_values`: their
    total feature values, to size the page cache), inserted while the next slice is encoded.

    The new contents go into a fresh table — Feast's columns and primary key, WITHOUT ROWID, so the
    primary key b-tree is the table — which then takes the old table's name (DROP + ALTER TABLE
    RENAME) before the commit: readers see the previous table or this one, never a mix. Feast's
    extra `<table>_ek` index on entity_key is not rebuilt: the primary key already orders by
    entity_key, and Feast's reads use it (`feast apply` re-creates the index, harmlessly)."""
    if not Path(db_path).exists():
        raise PipelineStateError(f"Online store {db_path} does not exist; apply the Feast repo (`personas run`) before publishing.")
    quoted, building = _quote(table), _quote(table + _BUILD_SUFFIX)
    # check_same_thread=False: a slice's insert runs in a second thread (one statement at a time).
    conn = sqlite3.connect(db_path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    try:
        columns = {r[1] for r in conn.execute(f"PRAGMA table_info({quoted})")}
        if not columns:
            raise PipelineStateError(f"Online store {db_path} has no table {table}; apply the Feast repo (`personas run`) before publishing.")
        if columns != _SQLITE_TABLE_COLUMNS:
            raise PipelineStateError(f"Online table {table} in {db_path} has columns {sorted(columns)}, not Feast's plain SQLite layout; publish it with Feast's write_to_online_store.")
        # Keep the whole new table in the page cache until the commit: a page spilled to the file
        # earlier would take the exclusive lock and block readers for the rest of the build.
        if isinstance(rows, SqliteRows):
            key_bytes, expected_values, rows = (len(rows.keys[0]) if rows.keys else 0), len(rows), [rows]
        else:
            key_bytes = 64  # an upper bound of usual keys: the cache size is a limit, not an allocation
        conn.execute(f"PRAGMA cache_size=-{max(131_072, expected_values * (key_bytes + 64) * 2 // 1024)}")
        conn.execute("PRAGMA temp_store=MEMORY")
        # DROP TABLE of the previous publish reads every page of it: through a memory map, not a
        # read() call per page (about a third less CPU for that step). Reads only: writes still go
        # through the journal as usual.
        conn.execute("PRAGMA mmap_size=268435456")
        with _immediate(conn):
            conn.execute(f"DROP TABLE IF EXISTS {building}")
            conn.execute(f"CREATE TABLE {building} ({_SQLITE_TABLE_SQL}) WITHOUT ROWID")
            _insert_sqlite_slices(conn, building, rows)
            conn.execute(f"DROP TABLE {quoted}")
            conn.execute(f"ALTER TABLE {building} RENAME TO {quoted}")
            _set_state(conn, table, epoch or uuid.uuid4().hex)  # the id of the publish the table now holds
    finally:
        conn.close()


def write_sqlite_changes(db_path: Path, table: str, rows: SqliteRows, removed_keys: list[bytes], expected_epoch: str, epoch: str, busy_timeout_s: float = 30.0) -> bool:
    """In one transaction: if the table still holds the publish `expected_epoch` (same table, not
    written since by anything but these functions), INSERT OR REPLACE `rows` (every feature of
    each person), DELETE the persons of `removed_keys`, and record `epoch`; True when written.
    Readers see the table before or after, never part of it."""
    quoted = _quote(table)
    conn = sqlite3.connect(db_path, timeout=busy_timeout_s, isolation_level=None)
    try:
        conn.execute("PRAGMA temp_store=MEMORY")
        with _immediate(conn):
            if _get_state(conn, table) != expected_epoch:
                return False
            conn.executemany(f"DELETE FROM {quoted} WHERE entity_key = ?", ((bytearray(k),) for k in removed_keys))
            _insert_sqlite_slices(conn, quoted, [rows])
            _set_state(conn, table, epoch)
        return True
    finally:
        conn.close()


def _ensure_state_table(conn: sqlite3.Connection) -> None:
    conn.execute(f"CREATE TABLE IF NOT EXISTS {_STATE_TABLE} (tbl TEXT PRIMARY KEY, epoch TEXT NOT NULL, rootpage INTEGER NOT NULL)")


def _set_state(conn: sqlite3.Connection, table: str, epoch: str) -> None:
    """Record that `table` (at its current b-tree root page) holds the publish `epoch`."""
    _ensure_state_table(conn)
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    conn.execute(f"INSERT OR REPLACE INTO {_STATE_TABLE} VALUES (?, ?, ?)", (table, epoch, root[0] if root else -1))


def _get_state(conn: sqlite3.Connection, table: str) -> str | None:
    """The publish `table` holds, or None: never recorded, written since, or re-created (by Feast)."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_STATE_TABLE,)).fetchone():
        return None
    held = conn.execute(f"SELECT epoch, rootpage FROM {_STATE_TABLE} WHERE tbl = ?", (table,)).fetchone()
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    return held[0] if held and root and held[1] == root[0] else None


def _forget_state(conn: sqlite3.Connection, table: str) -> None:
    """A write other than a publish (a pushed event, a deletion): the next publish rebuilds."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_STATE_TABLE,)).fetchone():
        conn.execute(f"DELETE FROM {_STATE_TABLE} WHERE tbl = ?", (table,))


@dataclass
class _RowSnapshot:
    """Each person's row hash (all the view's columns but none other) of one publish."""

    ids: pd.Series
    hashes: np.ndarray
    columns: list[str]
    epoch: str | None = None

    @classmethod
    def of(cls, view, rows: pd.DataFrame) -> "_RowSnapshot | None":
        """None when the rows cannot be compared person by person (several join keys, duplicates)."""
        if len(view.entity_columns) != 1:
            return None
        key = view.entity_columns[0].name
        if key not in rows.columns or rows[key].duplicated().any():
            return None
        source = view.batch_source
        wanted = {key, *(f.name for f in view.features), source.timestamp_field, *([source.created_timestamp_column] if source.created_timestamp_column else [])}
        columns = sorted(wanted & set(rows.columns))
        hashes = pd.util.hash_pandas_object(rows[columns].reset_index(drop=True), index=False).to_numpy()
        return cls(rows[key].reset_index(drop=True).astype(str), hashes, columns)

    def changes_from(self, previous: "_RowSnapshot") -> tuple[np.ndarray, list[str]]:
        """(positions of the rows new or changed since `previous`, ids of the persons it had and these rows lack)."""
        at = pd.Index(previous.ids).get_indexer(pd.Index(self.ids))  # -1: a new person
        held = previous.hashes[np.maximum(at, 0)] if len(previous.hashes) else np.zeros(len(at), dtype=np.uint64)
        same = (at >= 0) & (held == self.hashes)
        removed = previous.ids[~previous.ids.isin(self.ids)].tolist()
        return np.flatnonzero(~same), removed

    def save(self, path: Path, epoch: str) -> None:
        import json

        import pyarrow as pa
        import pyarrow.parquet as pq

        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table({"person_id": pa.array(self.ids.tolist(), pa.string()), "row_hash": pa.array(self.hashes, pa.uint64())})
        table = table.replace_schema_metadata({"epoch": epoch, "columns": json.dumps(self.columns)})
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "_RowSnapshot | None":
        import json

        import pyarrow.parquet as pq

        if not path.is_file():
            return None
        try:
            table = pq.read_table(path)
            meta = table.schema.metadata or {}
            return cls(pd.Series(table.column("person_id").to_pylist(), dtype=object), table.column("row_hash").to_numpy(), json.loads(meta[b"columns"]), meta[b"epoch"].decode())
        except (OSError, KeyError, ValueError):  # unreadable or rewritten without its metadata: rebuild
            return None


# --- Redis --------------------------------------------------------------------------------------
def redis_client(connection_string: str, **overrides):
    """A redis-py client from Feast's Redis `connection_string` (host:port,key=value,...)."""
    import json

    from redis import Redis

    parts = connection_string.split(",")
    host, _, port = parts[0].partition(":")
    params = {}
    for part in parts[1:]:
        key, _, raw = part.partition("=")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return Redis(host=host, port=int(port or 6379), **{**params, **overrides})


def no_client_retries() -> dict:
    """redis-py client arguments that turn its own retries off (personaops.retry does them)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {"retry": Retry(NoBackoff(), 0)}


def _timestamp_protos(stamps: pd.Series) -> list[bytes]:
    """Event times as Feast's Redis store stores them: a protobuf Timestamp of the tz-aware time."""
    import pyarrow as pa
    from feast.utils import make_tzaware
    from google.protobuf.timestamp_pb2 import Timestamp

    codes, uniques = pd.factorize(stamps, use_na_sentinel=False)
    out = []
    for t in pa.array(pd.Series(uniques, dtype=stamps.dtype)).to_pylist():
        ts = Timestamp()
        ts.FromDatetime(make_tzaware(t))
        out.append(ts.SerializeToString())
    return np.array(out, dtype=object)[codes].tolist()


def encode_redis_hashes(view, rows: pd.DataFrame, project: str, view_name: str, entity_key_serialization_version: int):
    """(keys, fields, values): each person's Redis key (`serialize_entity_key` + project), the view's
    hash field names (mmh3 of "<view>:<feature>", then "_ts:<view>"), and the field values of every
    person in that order, person after person — byte for byte what Feast's Redis store writes."""
    from feast.infra.online_stores.helpers import _mmh3

    join = [(c.name, c.dtype.to_value_type()) for c in view.entity_columns]
    if len(join) != 1:
        raise PipelineStateError(f"Feature view '{view.name}' has {len(join)} join keys; the fast Redis publish handles one, so publish it with Feast's write_to_online_store.")
    features = [(f.name, f.dtype.to_value_type()) for f in view.features]
    missing = [c for c in [join[0][0], *(f for f, _ in features), view.batch_source.timestamp_field] if c not in rows.columns]
    if missing:
        raise PipelineStateError(f"Rows for feature view '{view.name}' lack column '{missing[0]}'; add it before publishing.")
    keys = redis_keys(view, rows, project, entity_key_serialization_version)
    fields = [_mmh3(f"{view_name}:{name}") for name, _ in features] + [f"_ts:{view_name}".encode()]
    return keys, fields, _redis_values(view, rows, features)


def redis_keys(view, rows: pd.DataFrame, project: str, entity_key_serialization_version: int) -> list[bytes]:
    """Each row's Redis key: `serialize_entity_key` of its (single) join key + the project."""
    import pyarrow as pa

    name, value_type = view.entity_columns[0].name, view.entity_columns[0].dtype.to_value_type()
    column = pa.Table.from_pandas(rows[[name]].reset_index(drop=True), preserve_index=False).column(0).to_numpy(zero_copy_only=False)
    suffix = project.encode("utf-8")
    return [k + suffix for k in entity_keys(name, value_type, column, entity_key_serialization_version)]


def _redis_values(view, rows: pd.DataFrame, features: list) -> list[bytes]:
    """The field values of `rows`, person after person (features in order, then the event time)."""
    import pyarrow as pa

    table = pa.Table.from_pandas(rows[[name for name, _ in features]].reset_index(drop=True), preserve_index=False)
    per_field = [feature_values(table.column(name).to_numpy(zero_copy_only=False), value_type)[0] for name, value_type in features]
    per_field.append(_timestamp_protos(rows[view.batch_source.timestamp_field].reset_index(drop=True)))
    return list(itertools.chain.from_iterable(zip(*per_field)))


# A Redis publish encodes the field values of this many persons at a time (a multiple of its
# batch), not of every person at once: a value is a Python bytes object per person and feature.
_ENCODE_PERSONS = 65_536


class _ValuesBySlice:
    """Person-major field values of `rows`, encoded one slice of persons at a time on demand
    (`write_redis_hashes` asks for its batches in order, none straddling two slices)."""

    def __init__(self, view, rows: pd.DataFrame, slice_persons: int):
        self.view, self.rows, self.size = view, rows, slice_persons
        self.features = [(f.name, f.dtype.to_value_type()) for f in view.features]
        self.start, self.values = -1, []

    def get(self, start: int, stop: int) -> list[bytes]:
        first = start - start % self.size
        if first != self.start:
            self.start, self.values = first, []  # the slice before is dropped first
            self.values = _redis_values(self.view, self.rows.iloc[first : first + self.size], self.features)
        nf = len(self.features) + 1
        return self.values[(start - first) * nf : (stop - first) * nf]


def _pack_members(keys: list[bytes]) -> bytes:
    """Entity keys as one Redis string: count, lengths (uint32 little-endian), then the keys."""
    lengths = np.fromiter((len(k) for k in keys), dtype="<u4", count=len(keys))
    return struct.pack("<I", len(keys)) + lengths.tobytes() + b"".join(keys)


def _unpack_members(blob: bytes | None) -> list[bytes]:
    if not blob:
        return []
    (count,) = struct.unpack_from("<I", blob)
    lengths = np.frombuffer(blob, dtype="<u4", count=count, offset=4)
    ends = (4 + 4 * count + np.cumsum(lengths, dtype=np.int64)).tolist()
    return [blob[e - n : e] for e, n in zip(ends, lengths.tolist())]


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(b), b)


def _send_commands(conn, commands: list[bytes]) -> None:
    conn.send_packed_command([b"".join(commands)], check_health=False)


def _read_replies(conn, count: int) -> None:
    """Read `count` replies; a Redis error in any of them is raised after all are read."""
    from redis.exceptions import ResponseError

    failed = None
    for _ in range(count):
        try:
            conn.read_response()
        except ResponseError as exc:
            failed = failed or exc
    if failed is not None:
        raise PipelineStateError(f"Redis refused part of the online publish ({failed}); check the server's memory limit and logs, then publish again.")


def write_redis_hashes(client, members_key: bytes, keys: list[bytes], fields: list[bytes], values: list[bytes], ttl_s: int = 0, batch_persons: int = 5_000) -> None:
    """Write one hash per key — all `fields`, values person-major — as one HSET per person,
    pipelined in batches of `batch_persons` (the next batch is encoded while Redis applies the
    previous one); then drop `fields` from the keys of the previous publish not written now.

    Each person's fields change in one atomic HSET, so no reader sees a mix of two publishes for
    one person. The list of published keys is stored at `members_key` (and `members_key:next`
    while a publish runs, so keys of an interrupted publish are cleaned by the next one)."""
    nf = len(fields)
    # values: a list (person-major), or `_ValuesBySlice` encoding them a slice of persons at a time
    take = values.get if isinstance(values, _ValuesBySlice) else (lambda start, stop: values[start * nf : stop * nf])
    next_key = members_key + b":next"
    previous = set(_unpack_members(client.get(members_key))) | set(_unpack_members(client.get(next_key)))
    client.set(next_key, _pack_members(keys))
    head = b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * nf)
    field_bulks = [_bulk(f) for f in fields]
    conn = client.connection_pool.get_connection()
    try:
        pending = 0
        for start in range(0, len(keys), batch_persons):
            parts: list[bytes] = []
            add = parts.append
            stop = min(start + batch_persons, len(keys))
            batch = take(start, stop)
            for i in range(start, stop):
                add(head)
                add(_bulk(keys[i]))
                base = (i - start) * nf
                for j in range(nf):
                    add(field_bulks[j])
                    add(_bulk(batch[base + j]))
                if ttl_s:
                    add(b"*3\r\n$6\r\nEXPIRE\r\n" + _bulk(keys[i]) + _bulk(str(ttl_s).encode()))
            _send_commands(conn, parts)
            # Replies of the previous batch are read only now: Redis applied it while we encoded.
            _read_replies(conn, pending)
            pending = min(batch_persons, len(keys) - start) * (2 if ttl_s else 1)
        _read_replies(conn, pending)
        stale = list(previous.difference(keys))
        for start in range(0, len(stale), batch_persons):
            chunk = stale[start : start + batch_persons]
            hdel = b"*%d\r\n$4\r\nHDEL\r\n" % (2 + nf)
            _send_commands(conn, [b"".join(hdel + _bulk(k) + b"".join(field_bulks) for k in chunk)])
            _read_replies(conn, len(chunk))
    except BaseException:
        conn.disconnect()  # replies may be left unread on the socket
        raise
    finally:
        client.connection_pool.release(conn)
    client.rename(next_key, members_key)


# --- deletion: consent revocation and erasure ---------------------------------------------------
def delete_persons(store, person_ids: list[str]) -> dict[str, int]:
    """Remove every online row of `person_ids` from the store's feature views at once (consent
    revoked, erasure); return rows (SQLite) or keys (Redis) deleted per view / store.

    SQLite: `DELETE` by Feast's serialized entity key in each view's table, one transaction.
    Redis: Feast keeps one hash per entity and project holding every view's fields, so the key is
    deleted whole (and dropped from each view's published-members list). Other stores: Feast has
    no per-entity delete API, so this raises a one-line error rather than pretend."""
    ids = sorted({str(p) for p in person_ids})
    if not ids:
        return {}
    config = store.config
    kind = config.online_store.type
    views = [v for v in store.list_feature_views() if len(v.entity_columns) == 1 and v.entity_columns[0].name == "person_id"]
    version = config.entity_key_serialization_version
    out: dict[str, int] = {}
    if PUBLISHERS.get(kind) is SqlitePublisher:
        pub = SqlitePublisher(store)
        db = pub.db_path()
        if not db.exists():
            return out
        conn = sqlite3.connect(db, timeout=pub.busy_timeout_s, isolation_level=None)
        try:
            existing = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            with _immediate(conn):
                for view in views:
                    table = pub.table_name(view)
                    if table not in existing:
                        continue
                    keys = entity_keys("person_id", view.entity_columns[0].dtype.to_value_type(), np.array(ids, dtype=object), version)
                    _forget_state(conn, table)
                    cur = conn.executemany(f"DELETE FROM {_quote(table)} WHERE entity_key = ?", [(k,) for k in keys])
                    out[view.name] = max(cur.rowcount, 0)
        finally:
            conn.close()
        return out
    if PUBLISHERS.get(kind) is RedisPublisher:
        from feast.value_type import ValueType

        pub = RedisPublisher(store)
        suffix = config.project.encode("utf-8")
        keys = [k + suffix for k in entity_keys("person_id", ValueType.STRING, np.array(ids, dtype=object), version)]
        client = pub.client()
        try:
            out["redis_keys"] = int(client.delete(*keys))
            gone = set(keys)
            for view in views:
                members = pub.members_key(view)
                current = _unpack_members(client.get(members))
                if gone.intersection(current):
                    client.set(members, _pack_members([k for k in current if k not in gone]))
        finally:
            client.close()
        return out
    raise PipelineStateError(f"Online store type '{kind}' has no per-person delete in PersonaOps; delete the persons' rows with the store's own tools (or republish without them).")
