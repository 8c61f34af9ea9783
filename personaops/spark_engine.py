"""The Spark engine of the heavy stages (`compute.engine: spark`): ingest, features, batch scoring.

The rules stay in one place: every row-level decision is made by the pandas code of
personaops/ingest.py and personaops/features.py, called inside Spark tasks (mapInPandas /
applyInPandas), and Spark does what needs the whole data set — spreading rows over tasks, the
duplicate-row and duplicate-key checks across partitions and files, the join of records to
persons and the shuffle that brings each person's rows together. So the Spark path gives the
same lake, quarantine, feature tables and persona assignments as the embedded path (tested in
tests/integration/test_spark_path.py); docs/scaling.md says what runs where and what it costs.

Identity resolution already has Splink's Spark backend (personaops/matching.py); with
`compute.engine: spark` the resolve stage uses it, in the same Spark session. Feast's Spark offline
store serves historical retrieval (`spark_feature_store`). Nothing here is imported or started at
module import time: pyspark is imported inside the functions.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from personaops.config import PersonasConfig
from personaops.errors import ConfigError, SourceError
from personaops.workspace import Workspace

# Feast's data sources (feature_repo/data_sources.py) are SparkSources when this is "spark".
FEAST_OFFLINE_ENV = "PERSONAS_FEAST_OFFLINE_STORE"
_SEP = "\x1f"  # joins a row's reasons inside Spark (never in a reason: reasons are one line of text)


# --- the session -----------------------------------------------------------------------------
def session(cfg: PersonasConfig):
    """The process's Spark session (shared with identity's Splink pass), at compute.* settings."""
    from personaops import matching

    c = cfg.compute  # (matching.spark_session points Python workers at this interpreter)
    try:
        spark = matching.spark_session(c.spark_master, c.spark_driver_memory, c.spark_shuffle_partitions)
    except ConfigError:
        raise ConfigError(
            f"compute.engine is 'spark' but Spark could not start at {c.spark_master!r}; install Java 17 "
            "(infra/ensure-java.sh), check compute.spark_master, or set compute.engine: pandas."
        ) from None
    # Timestamps cross Arrow as UTC wall time; Feast's offline store switches regex column names
    # on for the shared session, which must not leak into the other stages' SQL.
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.parser.quotedRegexColumnNames", "false")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "20000")
    return spark


def spark_conf(cfg: PersonasConfig) -> dict[str, str]:
    """The settings of `session` as Spark configuration (for Feast's offline store to start it)."""
    from splink.backends.spark import similarity_jar_location

    c = cfg.compute
    conf = {
        "spark.master": c.spark_master, "spark.app.name": "personaops-identity", "spark.jars": similarity_jar_location(),
        "spark.driver.memory": c.spark_driver_memory, "spark.sql.shuffle.partitions": str(c.spark_shuffle_partitions),
        "spark.default.parallelism": str(c.spark_shuffle_partitions), "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true", "spark.sql.session.timeZone": "UTC",
    }  # fmt: skip
    if c.spark_master.startswith("local"):
        conf.update({"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"})
    return conf


def identity_config(cfg: PersonasConfig):
    """The identity settings of a run: on the Spark engine, Splink runs on the same session."""
    if cfg.compute.engine != "spark":
        return cfg.identity
    c = cfg.compute
    return cfg.identity.model_copy(
        update={"backend": "spark", "spark_master": c.spark_master, "spark_driver_memory": c.spark_driver_memory, "spark_shuffle_partitions": c.spark_shuffle_partitions}
    )


def _tasks(rows: int, cfg: PersonasConfig) -> int:
    """Tasks for `rows` rows: at least the shuffle partitions, at most rows_per_task rows each."""
    return max(cfg.compute.spark_shuffle_partitions, -(-rows // cfg.compute.spark_rows_per_task))


def _utc(frame: pd.DataFrame, columns) -> pd.DataFrame:
    """Arrow hands Spark timestamps to pandas as naive UTC wall time (session zone UTC): re-zone them."""
    for col in columns:
        if col in frame.columns:
            values = pd.to_datetime(frame[col])
            frame[col] = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
    return frame


# --- ingest ----------------------------------------------------------------------------------
def _canonical_types(spec) -> dict[str, str]:
    """Spark type of each canonical column ingest._canonical produces for `spec`, in its order."""
    out = {"source_key": "string"}
    out.update({kind: "string" for kind in spec.identifiers})
    out.update({kind: "string" for kind in spec.attributes})
    if spec.timestamp:
        out["event_time"] = "timestamp"
    if spec.text:
        out["text"] = "string"
    for role in spec.fields:
        out[role] = "double" if role in ("score", "converted") else "string"
    out.update({f"num__{c}": "double" for c in spec.numeric})
    out.update({f"cat__{c}": "string" for c in spec.categorical})
    out.update({f"label__{c}": "double" for c in spec.labels})
    out.update({f"sensitive__{c}": "string" for c in spec.sensitive})
    return out


def _file_identity(path: Path, seen: dict[str, str]) -> tuple[str, str | None]:
    """(batch id, name of the earlier file it copies or None) — ingest_file's rule, streamed."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    batch_id = h.hexdigest()[:16]
    copy_of = seen.get(batch_id)
    if copy_of is None:
        seen[batch_id] = path.name
        return batch_id, None
    h.update(b"\0copy:" + path.name.encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16], copy_of


def _chunks(spec, path: Path, chunk: int):
    """(header, raw string rows, structural rejects) of a file in chunks, by ingest's own readers."""
    from personaops import ingest

    reader = ingest._read_csv if spec.file_format(path) == "csv" else ingest._read_parquet
    yield from reader(spec, path, chunk)


def _hex_hashes(hashes: pd.Series) -> pd.Series:
    """Row hashes (ingest's uint64) as the lake stores them: 16 hex digits."""
    return hashes.map(lambda h: f"{h:016x}").astype(object)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Atomic Parquet write; an all-missing text column is typed string (as ingest writes it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    Workspace.ensure(path)
    tmp = path.with_suffix(".tmp")
    if len(frame):
        table = pa.Table.from_pandas(frame, preserve_index=False)
        schema = pa.schema([pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in table.schema], metadata=table.schema.metadata)
        pq.write_table(table.cast(schema), tmp)
    else:
        frame.to_parquet(tmp, index=False)
    tmp.replace(path)


def _parse_files(spec_json: str, raw_cols: list[str], chunk: int):
    """mapInPandas: one row per file in -> its raw string rows (ingest's own CSV/Parquet reader)."""

    def run(batches):
        from personaops import ingest
        from personaops.sources import SourceSpec

        spec = SourceSpec.model_validate_json(spec_json)
        names = [f"_c{i}" for i in range(len(raw_cols))]

        def frame(kind, file_index, numbers, values=None, reasons=None, raws=None):
            n = len(numbers)
            out = pd.DataFrame({"_kind": [kind] * n, "_file_index": np.full(n, file_index, dtype="int64"), "_row_number": np.asarray(numbers, dtype="int64")})
            for i, name in enumerate(names):
                out[name] = values[raw_cols[i]].to_numpy(dtype=object) if values is not None else None
            out["_reason"] = reasons if reasons is not None else None
            out["_raw"] = raws if raws is not None else None
            return out

        for batch in batches:
            for file_index, path in zip(batch["file_index"].tolist(), batch["path"].tolist()):
                path = Path(path)
                try:
                    for header, raw, rejects in _chunks(spec, path, chunk):
                        if not header:
                            yield frame("note", file_index, [0], reasons=["empty file: no header and no rows"])
                            raw = pd.DataFrame(columns=spec.mapped_columns(), dtype=object)
                        spec.require_columns(path, list(raw.columns))
                        raw = raw[raw_cols]
                        if len(raw):
                            yield frame("row", file_index, raw.index.to_numpy(), values=raw)
                            yield frame("count", file_index, [len(raw)])  # rows of this chunk, for the task count
                        if len(rejects):
                            yield frame("reject", file_index, rejects["_row_number"].tolist(), reasons=rejects["reason"].tolist(), raws=rejects["raw"].tolist())
                except (SourceError, OSError) as exc:
                    message = str(exc) if isinstance(exc, SourceError) else f"Source '{spec.name}': cannot read {path} ({exc.strerror}); check the path and its permissions."
                    yield frame("error", file_index, [0], reasons=[message])

    return run


def _validate_rows(spec_json: str, raw_cols: list[str], cfg_json: str, files: dict[int, dict], home: str, now_iso: str):
    """mapInPandas: raw rows -> canonical rows + their row-level reasons, exactly as ingest_file
    decides them (over-long fields, undecodable bytes, coercion, the pandera contract), the raw
    row hash, and whether a tombstone erases the row."""

    def run(batches):
        from personaops import ingest
        from personaops.config import IngestConfig
        from personaops.erasure import erased_mask
        from personaops.sources import SourceSpec

        spec = SourceSpec.model_validate_json(spec_json)
        cfg = IngestConfig.model_validate_json(cfg_json)
        ws = Workspace(Path(home))
        now = pd.Timestamp(now_iso)
        schema = ingest._schema(spec, cfg, now)
        types = _canonical_types(spec)
        text_columns = set(spec.text)
        names = [f"_c{i}" for i in range(len(raw_cols))]
        for batch in batches:
            for file_index, rows in batch.groupby("_file_index", sort=False):
                info = files[int(file_index)]
                raw = pd.DataFrame({col: rows[name].to_numpy(dtype=object) for col, name in zip(raw_cols, names)}, index=pd.Index(rows["_row_number"].to_numpy(), name="_row_number"))
                reasons: dict[int, list[str]] = {}
                if info["copy_of"] is not None:
                    for idx in raw.index:
                        reasons.setdefault(int(idx), []).append(f"the file is a byte-for-byte copy of {info['copy_of']}, already ingested from this source")
                for col in raw.columns:
                    if col in text_columns:
                        continue
                    too_long = ingest._str_mask(raw[col], lambda a: ingest.pc.greater(ingest.pc.utf8_length(a), ingest.MAX_FIELD_CHARS), lambda v: len(v) > ingest.MAX_FIELD_CHARS)
                    for idx in too_long[too_long].index:
                        reasons.setdefault(int(idx), []).append(f"{col} is longer than {ingest.MAX_FIELD_CHARS:,} characters")
                if len(raw) and len(raw.columns):
                    bad_bytes = pd.concat([ingest._str_mask(raw[c], lambda a: ingest.pc.match_substring(a, "\ufffd"), lambda v: "\ufffd" in v) for c in raw.columns], axis=1).any(axis=1)
                    for idx in bad_bytes[bad_bytes].index:
                        reasons.setdefault(int(idx), []).append("holds bytes that are not valid UTF-8 (or NUL)")
                canon, coercion = ingest._canonical(spec, raw, cfg, key_prefix=info["key_prefix"])
                for idx, msgs in coercion.items():
                    reasons.setdefault(idx, []).extend(msgs)
                for idx, msgs in ingest._pandera_reasons(schema, canon, spec).items():
                    already = {m.split(":", 1)[0] for m in reasons.get(idx, [])}
                    kept = reasons.setdefault(idx, [])
                    kept.extend(dict.fromkeys(m for m in msgs if m not in kept and not (m.endswith(" is missing") and m[: -len(" is missing")] in already)))
                hashes = _hex_hashes(ingest._row_hashes(raw))
                erased = erased_mask(ws, spec.name, canon, hashes, keyed=bool(spec.key))
                out = pd.DataFrame(index=raw.index)
                for col, kind in types.items():
                    values = canon[col] if col in canon.columns else pd.Series(None, index=raw.index, dtype=object)
                    if kind == "double":
                        values = pd.to_numeric(values, errors="coerce").astype("float64")
                    elif kind == "string":
                        values = values.astype(object).where(values.notna(), None)
                    out[col] = values
                out["_file_index"] = int(file_index)
                out["_row_number"] = raw.index.to_numpy(dtype="int64")
                out["_reasons"] = [_SEP.join(reasons.get(int(i), [])) or None for i in raw.index]
                out["_row_hash"] = hashes.reindex(raw.index).astype(object).to_numpy()
                out["_erased"] = erased.reindex(raw.index, fill_value=False).astype(bool).to_numpy()
                for col, name in zip(raw_cols, names):
                    out[name] = raw[col].to_numpy(dtype=object)
                yield out.reset_index(drop=True)

    return run


def ingest_sources(specs, ws: Workspace, cfg: PersonasConfig, run_id: str) -> list:
    """ingest.ingest_sources on Spark: the same lake and quarantine files, the same reports."""
    from pyspark.sql import functions as sf
    from pyspark.sql.window import Window

    from personaops import ingest
    from personaops.erasure import ERASED_REASON

    spark = session(cfg)
    now = pd.Timestamp(datetime.now(timezone.utc))
    reports = []
    for spec in specs:
        report = ingest.SourceReport(source=spec.name, kind=spec.kind, mode="full", full_reason="compute.engine is spark: every file is ingested whole")
        paths = spec.files()
        seen_files: dict[str, str] = {}
        files: dict[int, dict] = {}
        for i, path in enumerate(paths):
            try:
                batch_id, copy_of = _file_identity(path, seen_files)
            except OSError as exc:
                raise SourceError(f"Source '{spec.name}': cannot read {path} ({exc.strerror}); check the path and its permissions.") from None
            files[i] = {"path": str(path), "name": path.name, "batch_id": batch_id, "copy_of": copy_of, "key_prefix": f"{path.name}:" if spec.path.is_dir() else ""}
        raw_cols = spec.mapped_columns()
        names = [f"_c{i}" for i in range(len(raw_cols))]
        parsed_schema = "_kind string, _file_index long, _row_number long, " + ", ".join(f"{n} string" for n in names) + ", _reason string, _raw string"
        listing = spark.createDataFrame(pd.DataFrame({"file_index": list(files), "path": [files[i]["path"] for i in files]}))
        parsed = listing.repartition(max(1, len(files)), "file_index").mapInPandas(
            _parse_files(spec.model_dump_json(), raw_cols, cfg.compute.spark_rows_per_task), parsed_schema
        ).persist()
        special = parsed.filter("_kind != 'row'").select("_kind", "_file_index", "_row_number", "_reason", "_raw").toPandas()
        errors = special[special["_kind"] == "error"].sort_values("_file_index")
        if len(errors):
            parsed.unpersist()
            raise SourceError(str(errors["_reason"].iloc[0]))
        rows = parsed.filter("_kind = 'row'")
        n_rows = int(special.loc[special["_kind"] == "count", "_row_number"].sum())
        types = _canonical_types(spec)
        validated_schema = ", ".join(f"`{c}` {t}" for c, t in types.items()) + ", _file_index long, _row_number long, _reasons string, _row_hash string, _erased boolean, " + ", ".join(f"{n} string" for n in names)
        validated = rows.repartition(_tasks(n_rows, cfg)).mapInPandas(
            _validate_rows(spec.model_dump_json(), raw_cols, cfg.ingest.model_dump_json(), files, str(ws.root), now.isoformat()), validated_schema
        )
        # Across partitions and files: a repeated raw row (same file), then a key seen earlier in
        # the source (files in order) among rows not already rejected — ingest_file's two rules.
        by_hash = Window.partitionBy("_file_index", "_row_hash")
        validated = validated.withColumn("_dup_of", sf.min("_row_number").over(by_hash))
        validated = validated.withColumn("_dup_of", sf.when(sf.col("_dup_of") != sf.col("_row_number"), sf.col("_dup_of")))
        candidate = sf.col("source_key").isNotNull() & sf.col("_reasons").isNull() & sf.col("_dup_of").isNull()
        # One window, no self-join: each candidate's first earlier candidate with the same key.
        by_key = Window.partitionBy("source_key").orderBy("_file_index", "_row_number").rowsBetween(Window.unboundedPreceding, Window.currentRow)
        first = sf.first(sf.when(candidate, sf.struct(sf.col("_file_index").alias("f"), sf.col("_row_number").alias("r"))), ignorenulls=True).over(by_key)
        validated = validated.withColumn("_first", first)
        again = candidate & ((sf.col("_first.f") != sf.col("_file_index")) | (sf.col("_first.r") != sf.col("_row_number")))
        validated = validated.withColumn("_key_file", sf.when(again, sf.col("_first.f"))).withColumn("_key_row", sf.when(again, sf.col("_first.r"))).drop("_first")
        result = validated.toPandas()
        parsed.unpersist()
        result = _utc(result, ["event_time"])
        for i in sorted(files):
            report.files.append(_write_file(spec, files[i], result[result["_file_index"] == i], special[special["_file_index"] == i], types, raw_cols, files, ws, now, ERASED_REASON))
        reports.append(report)
    return reports


def _write_file(spec, info: dict, rows: pd.DataFrame, special: pd.DataFrame, types: dict, raw_cols: list[str], files: dict, ws: Workspace, now, erased_reason: str):
    """One file's accepted rows to the lake and rejected rows to the quarantine (ingest's layout)."""
    from personaops import ingest

    rows = rows.sort_values("_row_number", kind="stable").set_index("_row_number", drop=False)
    names = [f"_c{i}" for i in range(len(raw_cols))]
    reasons: dict[int, list[str]] = {}
    for idx, text in rows["_reasons"].dropna().items():
        reasons[int(idx)] = text.split(_SEP)
    for idx, first in rows["_dup_of"].dropna().items():
        reasons.setdefault(int(idx), []).append(f"duplicate of row {int(first)}")
    for idx, row in rows[rows["_key_row"].notna()].iterrows():
        where = f"{files[int(row['_key_file'])]['name']} row {int(row['_key_row'])}"
        reasons.setdefault(int(idx), []).append(f"duplicate key {str(row['source_key'])[:60]!r} (first at {where})")
    erased_index = {int(i) for i in rows.index[rows["_erased"].astype(bool)]}
    for idx in erased_index:
        reasons[idx] = [erased_reason]
    bad_index = pd.Index(sorted(reasons), dtype="int64")
    accepted = rows.drop(index=bad_index)[list(types)].copy()
    for col, kind in types.items():
        if kind == "string":
            accepted[col] = accepted[col].astype(object)
    accepted["_source"] = spec.name
    accepted["_batch_id"] = info["batch_id"]
    accepted["_file"] = info["path"]
    accepted["_row_number"] = accepted.index.astype("int64")
    accepted["_row_hash"] = rows.loc[accepted.index, "_row_hash"].astype(object)
    accepted["_ingested_at"] = now
    accepted = accepted.reset_index(drop=True)
    raw = rows[names].set_axis(raw_cols, axis=1)
    quarantined = pd.DataFrame(
        {
            "_row_number": bad_index.astype("int64"),
            "reason": ["; ".join(reasons[i]) for i in bad_index],
            "raw": ["{}" if int(i) in erased_index else json.dumps({k: (v[:500] if isinstance(v, str) else v) for k, v in raw.loc[i].items()}, ensure_ascii=False) for i in bad_index],
        }
    )
    rejects = special[special["_kind"] == "reject"]
    if len(rejects):
        rejects = pd.DataFrame({"_row_number": rejects["_row_number"].astype("int64").to_numpy(), "reason": rejects["_reason"].to_numpy(), "raw": rejects["_raw"].to_numpy()})
        quarantined = pd.concat([rejects, quarantined], ignore_index=True)
    quarantined["_source"] = spec.name
    quarantined["_batch_id"] = info["batch_id"]
    quarantined["_file"] = info["path"]
    quarantined["_row_number"] = quarantined["_row_number"].astype("int64")
    notes = special[special["_kind"] == "note"]["_reason"].tolist()
    rows_in = len(rows) + len(rejects)
    assert rows_in == len(accepted) + len(quarantined), "ingest lost rows"  # invariant, never user input
    _write_parquet(accepted, ws.lake / spec.name / f"batch={info['batch_id']}" / "part-0.parquet")
    _write_parquet(quarantined.sort_values("_row_number", kind="stable"), ws.quarantine / spec.name / f"batch={info['batch_id']}" / "part-0.parquet")
    # validated whole, like the embedded path's full ingest (the Spark path keeps no incremental-ingest state)
    return ingest.FileReport(file=info["path"], batch_id=info["batch_id"], rows_in=rows_in, accepted=len(accepted), quarantined=len(quarantined),
                             note=notes[0] if notes else "", batches=[info["batch_id"]], mode="full",
                             new_rows_in=rows_in, new_accepted=len(accepted), new_quarantined=len(quarantined))  # fmt: skip


# --- features --------------------------------------------------------------------------------
def _spark_type(arrow_type) -> str:
    import pyarrow as pa

    if pa.types.is_timestamp(arrow_type):
        return "timestamp"
    if pa.types.is_floating(arrow_type):
        return "double"
    if pa.types.is_integer(arrow_type):
        return "long"
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    return "string"  # strings, and all-missing (null-typed) columns


def _lake_schema(ws: Workspace, source: str, batch_ids: list[str]) -> dict[str, str]:
    """Column -> Spark type over a source's lake batches (a column typed in any batch wins over null)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: dict[str, str] = {}
    for b in batch_ids:
        for f in pq.read_schema(ws.lake / source / f"batch={b}" / "part-0.parquet"):
            if f.name not in out or (out[f.name] == "string" and not pa.types.is_null(f.type) and _spark_type(f.type) != "string"):
                out[f.name] = _spark_type(f.type)
    return out


def _read_lake_files(home: str, columns: dict[str, str]):
    """mapInPandas: (source, batch_id) rows -> that batch's lake rows, read by ingest.read_lake."""

    def run(batches):
        from personaops.ingest import read_lake

        ws = Workspace(Path(home))
        for batch in batches:
            for source, batch_id, src_idx, batch_idx in batch[["source", "batch_id", "src_idx", "batch_idx"]].itertuples(index=False):
                frame = read_lake(ws, source, [batch_id])
                out = pd.DataFrame(index=frame.index)
                for col, kind in columns.items():
                    values = frame[col] if col in frame.columns else pd.Series(None, index=frame.index, dtype=object)
                    if kind == "timestamp":
                        values = pd.to_datetime(values, utc=True)
                    elif kind == "double":
                        values = pd.to_numeric(values, errors="coerce").astype("float64")
                    elif kind == "string":
                        values = values.astype(object).where(values.notna(), None)
                    out[col] = values
                out["source"], out["_src_idx"], out["_batch_idx"] = source, int(src_idx), int(batch_idx)
                yield out

    return run


FEATURE_TABLES = ("person_behaviour", "person_support", "person_survey", "person_campaign", "person_profile", "person_labels")


def _person_tables(kinds: dict[str, str], source_columns: dict[str, list[str]], timestamps: list[str], as_of_iso: str, event_types: list[str] | None):
    """applyInPandas over a bucket of persons: every row of those persons -> the features.py
    tables of those persons (each as Parquet bytes), computed by the same functions as the
    embedded path on frames rebuilt exactly as the flow builds them."""

    def run(key, rows: pd.DataFrame) -> pd.DataFrame:
        from personaops import features as F

        as_of = pd.Timestamp(as_of_iso)
        rows = _utc(rows, timestamps)
        if event_types is not None:
            # The vocabulary of event types is global (chosen over everyone before the shuffle):
            # a bucket must not pick its own top types.
            F.MAX_EVENT_TYPES = len(event_types)
        rows = rows.sort_values(["_src_idx", "_batch_idx", "_row_number"], kind="stable")
        frames = {s: rows[rows["source"] == s][source_columns[s]].reset_index(drop=True) for s in kinds if s in source_columns}

        def of_kind(kind: str) -> pd.DataFrame:
            parts = [frames[s] for s, k in kinds.items() if k == kind and s in frames and len(frames[s])]
            return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

        campaigns = of_kind("campaigns")
        tables = {
            "person_behaviour": F.behaviour_features(of_kind("events"), as_of),
            "person_support": F.support_features(of_kind("tickets"), as_of),
            "person_survey": F.survey_features(of_kind("surveys"), as_of),
            "person_campaign": F.campaign_features(campaigns, as_of),
            "person_profile": F.profile_features(of_kind("crm"), as_of),
            "person_labels": F.label_table(frames, campaigns, as_of),
            "_sensitive": F.sensitive_table(frames),
        }
        payloads = []
        for name, table in tables.items():
            buf = io.BytesIO()
            table.to_parquet(buf, index=False)
            payloads.append((name, buf.getvalue()))
        return pd.DataFrame(payloads, columns=["table", "payload"])

    return run


def _assemble(parts: list[pd.DataFrame], view: str, event_types: list[str] | None) -> pd.DataFrame:
    """The buckets' pieces of one table as the embedded path writes it: persons in order, the
    global column order, and the one-hot shares a bucket never saw as 0."""
    from personaops import features as F

    nonempty = [p for p in parts if len(p)]
    if not nonempty:
        return parts[0]
    table = pd.concat(nonempty, ignore_index=True)
    if view == "person_behaviour":
        shares = [F.event_type_column(t) for t in sorted(event_types or [])]
        shares = list(dict.fromkeys(shares))
        base = [c for c in table.columns if not c.startswith("share_") and c not in ("person_id", "event_timestamp", "created")]
        for col in shares:
            table[col] = table[col].fillna(0.0) if col in table.columns else 0.0
        table = table[["person_id", *base, *shares, "event_timestamp", "created"]]
    elif view == "person_labels":
        labels = sorted(c for c in table.columns if c not in ("person_id", "event_timestamp", "created"))
        table = table[["person_id", *labels, "event_timestamp", "created"]]
    for col in ("event_timestamp", "created"):
        if col in table.columns:
            table[col] = pd.to_datetime(table[col], utc=True)
    for col in table.columns:
        if col.startswith("n_") and table[col].notna().all():
            table[col] = table[col].astype("int64")
    return table.sort_values("person_id", kind="stable").reset_index(drop=True)


def feature_tables(ws: Workspace, cfg: PersonasConfig, batches: dict[str, list[str]], kinds: dict[str, str], record_person: pd.DataFrame) -> tuple[pd.Timestamp, dict[str, pd.DataFrame], pd.DataFrame, pd.DataFrame]:
    """(as_of, the six per-person feature tables, person texts, sensitive table) on Spark — what
    the features stage computes from the lake with personaops/features.py."""
    from pyspark.sql import functions as sf

    from personaops import features as F

    spark = session(cfg)
    persons = spark.createDataFrame(record_person[["source", "source_key", "person_id"]].astype(str))
    order = list(kinds)  # the flow concatenates sources in this order
    source_schemas = {s: _lake_schema(ws, s, batches.get(s, [])) for s in order if batches.get(s)}
    # Only the columns the feature functions read (features.LAKE_COLUMNS / LAKE_PREFIXES), when declared.
    wanted, prefixes = set(getattr(F, "LAKE_COLUMNS", ())) | {"source_key", "_row_number"}, tuple(getattr(F, "LAKE_PREFIXES", ()))
    if hasattr(F, "LAKE_COLUMNS"):
        source_schemas = {s: {c: t for c, t in schema.items() if c in wanted or c.startswith(prefixes)} for s, schema in source_schemas.items()}
    columns: dict[str, str] = {}
    for schema in source_schemas.values():
        for col, kind in schema.items():
            if col not in columns or columns[col] == "string":
                columns[col] = kind if col not in columns or kind != "string" else columns[col]
    listing = pd.DataFrame(
        [(s, b, order.index(s), j) for s in source_schemas for j, b in enumerate(batches[s])], columns=["source", "batch_id", "src_idx", "batch_idx"]
    )
    read_schema = ", ".join(f"`{c}` {t}" for c, t in columns.items()) + ", source string, _src_idx int, _batch_idx int"
    lake = spark.createDataFrame(listing).repartition(max(1, len(listing))).mapInPandas(_read_lake_files(str(ws.root), columns), read_schema)
    rows = lake.join(persons, ["source", "source_key"], "inner").persist()
    timestamps = [c for c, t in columns.items() if t == "timestamp"]
    stats = rows.agg(sf.max("event_time").alias("as_of"), sf.count(sf.lit(1)).alias("n")).collect()[0] if "event_time" in columns else None
    as_of = pd.Timestamp(stats["as_of"], tz="UTC") if stats is not None and stats["as_of"] is not None else pd.Timestamp("1970-01-01", tz="UTC")
    n_rows = stats["n"] if stats is not None else rows.count()
    event_sources = [s for s, k in kinds.items() if k == "events" and s in source_schemas]
    event_types = None
    if event_sources and "event_type" in columns:
        counts = rows.filter(sf.col("source").isin(event_sources)).groupBy("event_type").count().toPandas()
        counts = counts.dropna(subset=["event_type"])
        if len(counts) > F.MAX_EVENT_TYPES:
            # as value_counts().index[:MAX_EVENT_TYPES] over everyone (ties broken by name here)
            top = counts.sort_values(["count", "event_type"], ascending=[False, True])["event_type"].head(F.MAX_EVENT_TYPES).tolist()
            rows = rows.withColumn("event_type", sf.when(sf.col("source").isin(event_sources) & ~sf.col("event_type").isin(top), sf.lit("other")).otherwise(sf.col("event_type")))
            event_types = sorted(set(top) | {"other"})
        else:
            event_types = sorted(counts["event_type"].tolist())
    source_columns = {s: [*schema, "source", "person_id"] for s, schema in source_schemas.items()}  # as the flow's frames
    n_buckets = _tasks(n_rows, cfg)
    bucketed = rows.withColumn("_bucket", sf.pmod(sf.xxhash64("person_id"), sf.lit(n_buckets)))
    pieces = (
        bucketed.groupBy("_bucket")
        .applyInPandas(_person_tables(kinds, source_columns, timestamps, as_of.isoformat(), event_types), "table string, payload binary")
        .toPandas()
    )
    tables: dict[str, pd.DataFrame] = {}
    for view in (*FEATURE_TABLES, "_sensitive"):
        parts = [pd.read_parquet(io.BytesIO(p)) for p in pieces.loc[pieces["table"] == view, "payload"]]
        if not parts:  # no person at all: the functions' own empty tables
            parts = [_empty_table(view, as_of)]
        tables[view] = _assemble(parts, view, event_types) if view != "_sensitive" else _sensitive(parts)
    sensitive = tables.pop("_sensitive")
    texts = _texts(rows, kinds, source_schemas)
    rows.unpersist()
    return as_of, tables, texts, sensitive


def _empty_table(view: str, as_of: pd.Timestamp) -> pd.DataFrame:
    from personaops import features as F

    empty = pd.DataFrame()
    return {
        "person_behaviour": lambda: F.behaviour_features(empty, as_of),
        "person_support": lambda: F.support_features(empty, as_of),
        "person_survey": lambda: F.survey_features(empty, as_of),
        "person_campaign": lambda: F.campaign_features(empty, as_of),
        "person_profile": lambda: F.profile_features(empty, as_of),
        "person_labels": lambda: F.label_table({}, empty, as_of),
        "_sensitive": lambda: F.sensitive_table({}),
    }[view]()


def _sensitive(parts: list[pd.DataFrame]) -> pd.DataFrame:
    nonempty = [p for p in parts if len(p)]
    if not nonempty:
        return parts[0]
    return pd.concat(nonempty, ignore_index=True).sort_values("person_id", kind="stable").reset_index(drop=True)


def _texts(rows, kinds: dict[str, str], source_schemas: dict[str, dict]) -> pd.DataFrame:
    """features.person_texts over the Spark rows: only the text-bearing columns come to the driver."""
    from pyspark.sql import functions as sf

    with_text = [s for s in kinds if s in source_schemas and "text" in source_schemas[s]]
    if not with_text:
        return pd.DataFrame(columns=["person_id", "source", "source_key", "event_time", "text"])
    has_time = "event_time" in rows.columns
    picked = rows.filter(sf.col("source").isin(with_text) & sf.col("text").isNotNull()).select(
        "person_id", "source", "source_key", (sf.col("event_time") if has_time else sf.lit(None).cast("timestamp")).alias("event_time"), "text", "_src_idx", "_batch_idx", "_row_number"
    )
    texts = _utc(picked.toPandas(), ["event_time"])
    texts = texts.sort_values(["_src_idx", "_batch_idx", "_row_number"], kind="stable")
    for s in with_text:  # a source without timestamps has no text times (person_texts: NaT)
        if "event_time" not in source_schemas[s]:
            texts.loc[texts["source"] == s, "event_time"] = pd.NaT
    return texts[["person_id", "source", "source_key", "event_time", "text"]].reset_index(drop=True)


# --- batch scoring ---------------------------------------------------------------------------
def score_persons(cfg: PersonasConfig, model, frame: pd.DataFrame) -> pd.DataFrame:
    """registry.score on Spark: the champion's scorer (plain Python + numpy, shipped to the
    tasks once) predicts each partition of persons. Same rows, same order as `frame`."""
    from models import registry

    scorer = getattr(model.unwrap_python_model(), "scorer", None) if hasattr(model, "unwrap_python_model") else None
    if scorer is None or frame.empty:
        return registry.score(model, frame)
    spark = session(cfg)
    data = frame.reset_index(drop=True).copy()
    columns = list(data.columns)
    data.columns = [f"_f{i}" for i in range(len(columns))]  # feature names are data: keep Spark out of them
    data["_pos"] = np.arange(len(data), dtype="int64")
    if "text_embedding" in columns:
        name = f"_f{columns.index('text_embedding')}"
        data[name] = data[name].map(lambda v: None if v is None else [float(x) for x in v])
    sdf = spark.createDataFrame(data)

    def predict(batches):
        for batch in batches:
            part = batch.drop(columns=["_pos"]).set_axis(columns, axis=1)
            if "text_embedding" in part.columns:
                part["text_embedding"] = part["text_embedding"].map(lambda v: None if v is None else np.asarray(v, dtype="float32"))
            out = scorer.predict(part.reset_index(drop=True)).reset_index(drop=True)
            out["_pos"] = batch["_pos"].to_numpy()
            yield out

    scored = sdf.repartition(_tasks(len(data), cfg)).mapInPandas(predict, "persona_id long, persona_name string, confidence double, _pos long").toPandas()
    scored = scored.sort_values("_pos").drop(columns="_pos").reset_index(drop=True)
    scored["persona_id"] = scored["persona_id"].astype("int64")
    return scored


# --- Feast: the Spark offline store ----------------------------------------------------------
def spark_feature_store(ws: Workspace, cfg: PersonasConfig, fs_yaml: Path):
    """A Feast FeatureStore whose offline store is Spark (SparkOfflineStore on the shared
    session): historical retrieval (`get_historical_features`) runs as Spark SQL over the same
    Parquet tables, declared as SparkSources. Online store and registry: the profile's."""
    import yaml
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    os.environ[FEAST_OFFLINE_ENV] = "spark"
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    raw = yaml.safe_load(os.path.expandvars(fs_yaml.read_text(encoding="utf-8")))
    # No JVM starts here (serving never needs one): the offline store uses the running session,
    # or starts one with the same settings as `session` when a retrieval comes first.
    raw["offline_store"] = {"type": "spark", "spark_conf": spark_conf(cfg)}
    config = RepoConfig(**raw)
    config.repo_path = Path(cfg.feature_repo)
    return FeatureStore(repo_path=str(cfg.feature_repo), config=config)
