"""`personas`: the PersonaOps command line (typer + rich).

Every user error ends in one sentence on stderr and exit code 1; `--json` output is stable
(documented in docs/cli.md).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from personaops import progress
from personaops.config import PersonasConfig, load_config
from personaops.errors import NotFoundError, PersonaOpsError
from personaops.workspace import Workspace

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Data-backed user personas.")
models_app = typer.Typer(no_args_is_help=True, help="Persona model versions in the MLflow registry.")
app.add_typer(models_app, name="models")
out = Console()
err = Console(stderr=True)


def _workspace() -> tuple[PersonasConfig, Workspace]:
    cfg = load_config()
    ws = Workspace.from_config(cfg)
    ws.export_environment()
    return cfg, ws


def _guard(cfg: PersonasConfig, ws: Workspace, action: str):
    """The CLI's local identity, if its role may do `action` (personaops/roles.py); else one
    sentence, exit 1, and an `access_denied` audit entry."""
    from personaops import roles

    return roles.require(ws, roles.cli_identity(cfg), action)


def _emit_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


class _RichListener:
    """Shows stage progress as rich progress rows."""

    def __init__(self, bar: Progress):
        self.bar = bar
        self.tasks: dict[str, int] = {}

    def started(self, stage: str, description: str) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(f"{stage:<9} {description}", total=None)
        else:
            self.bar.update(self.tasks[stage], description=f"{stage:<9} {description}")

    def progress(self, stage: str, done: int, total: int) -> None:
        self.bar.update(self.tasks[stage], completed=done, total=total)

    def finished(self, stage: str, summary: str) -> None:
        self.bar.update(self.tasks[stage], description=f"[green]{stage:<9}[/] {summary}", completed=1, total=1)


def _quiet_prefect_console() -> None:
    # Prefect task failures would print tracebacks on the console; the CLI prints one sentence
    # instead. Logs still reach the Prefect API (see the run in the Prefect UI).
    from prefect.logging.handlers import PrefectConsoleHandler

    for name in ("", "uvicorn", "fastapi"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler) and not os.environ.get("PERSONAS_VERBOSE"):
                handler.setLevel(logging.CRITICAL)


def _run_flow(name: str, ws: Workspace, **params) -> dict:
    """Run a Prefect flow in this process with a progress display."""
    ws.prefect.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level itself
    if name == "build_personas":
        from flows.build_personas import build_personas as flow_fn
    else:
        from flows.monitor_personas import monitor_personas as flow_fn

    _quiet_prefect_console()
    # One run per workspace: a second one waits up to $PERSONAS_LOCK_TIMEOUT s, then refuses.
    with ws.lock(f"personas {name}"), Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err) as bar:
        progress.listen(_RichListener(bar))
        try:
            return flow_fn(home=str(ws.root), **params)
        finally:
            progress.listen(None)


def _run_pipeline(sources: Path, ws: Workspace) -> dict:
    return _run_flow("build_personas", ws, sources=str(sources.resolve()))


def _print_run(record: dict) -> None:
    table = Table(title=f"Run {record['run_id']}", show_header=True)
    table.add_column("source")
    table.add_column("rows in", justify="right")
    table.add_column("accepted", justify="right")
    table.add_column("quarantined", justify="right")
    for s in record["ingest"]:
        table.add_row(s["source"], f"{s['rows_in']:,}", f"{s['accepted']:,}", f"{s['quarantined']:,}")
    out.print(table)
    train = record["train"]
    trained = f"v{train['version']} ({', '.join(train['aliases']) or 'no alias'}; MLflow run {train['run_id']})" if "run_id" in train else f"nothing ({train['skipped']})"
    out.print(
        f"persons: {record['resolve']['persons']:,}   trained: {trained}   serving: v{record['publish']['model_version']}   "
        f"drifted feature share: {record['monitor']['drifted_share']:.0%}   monitoring action: {record['monitor']['action']}"
    )
    out.print(f"reports: {record['monitor']['html']}")


def _catalogue(cfg: PersonasConfig, ws: Workspace) -> tuple[int, list[dict]]:
    from models import registry
    from models.train import load_profiles

    version = registry.alias_version(ws, cfg.model.registered_name, registry.CHAMPION)
    if version is None:
        raise NotFoundError(f"No champion persona model in {ws.root}; run `personas demo` or `personas run --sources FILE` first.")
    return version, load_profiles(ws, registry.version_run_id(ws, cfg.model.registered_name, version))


def _print_catalogue(version: int, profiles: list[dict]) -> None:
    out.rule(f"Persona catalogue — persona-model v{version} (champion)")
    for p in sorted(profiles, key=lambda p: -p["size"]):
        out.print(f"[bold]{p['persona_id']}. {p['name']}[/]  ({p['size']:,} people, {p['share']:.0%})")
        out.print(f"   {p['description']}")
        for q in p["quotes"][:2]:
            out.print(f'   [italic]"{q["text"]}"[/]')
        out.print()


# --- commands --------------------------------------------------------------------------------
@app.command()
def generate(
    users: int = typer.Option(10_000, min=1, help="number of people"),
    seed: int = typer.Option(7, help="random seed (same seed, same data)"),
    out_dir: Path = typer.Option(..., "--out", help="output folder"),
    period: int = typer.Option(0, min=0, help="later observation period of the same population"),
    drift: str = typer.Option("none", help="planted change: none, mix, behaviour, vocabulary, broken, bias"),
    join_rate: float = typer.Option(None, min=0.0, max=1.0, help="new people per period, share of --users (default 0.03 in later periods, 0 in period 0; in period 0 it adds people: 'grow')"),
    leave_rate: float = typer.Option(None, min=0.0, max=1.0, help="chance per period that a person leaves and goes silent (default 0.02 in later periods; churners 4x as likely)"),
) -> None:
    """Generate synthetic multi-source data with planted personas, a sources.yaml and truth files."""
    from personaops.generate import DRIFT_KINDS, generate as make

    if drift not in DRIFT_KINDS:
        raise PersonaOpsError(f"--drift {drift!r} is not a known change; use one of {', '.join(DRIFT_KINDS)}.")
    counts = make(users, seed, out_dir, period, drift, join_rate=join_rate, leave_rate=leave_rate)
    suffix = f"_p{period}" if period else ""
    out.print(f"wrote {', '.join(f'{k}: {v:,}' for k, v in counts.items())} to {out_dir}")
    out.print(f"sources file: {out_dir / f'sources{suffix}.yaml'}")


@app.command()
def run(sources: Path = typer.Option(..., "--sources", help="sources.yaml describing your data")) -> None:
    """Run the whole pipeline (ingest, resolve, features, quality, train, publish, monitor) on your sources."""
    from personaops.sources import load_sources

    cfg, ws = _workspace()
    for spec in load_sources(sources):  # fail fast, before any service starts
        spec.check_columns()
    from personaops.retry import check_services

    check_services(cfg)  # production profile: PostgreSQL, Redis, MLflow answer (bounded retries), or one line
    record = _run_pipeline(sources, ws)
    _print_run(record)
    version, profiles = _catalogue(cfg, ws)
    _print_catalogue(version, profiles)


@app.command()
def demo(
    users: int = typer.Option(10_000, min=50, help="number of generated people"),
    seed: int = typer.Option(7, help="random seed"),
) -> None:
    """Generate synthetic sources in the workspace, then run the pipeline on them."""
    from personaops.generate import generate as make

    cfg, ws = _workspace()
    data = ws.root / "demo-data"
    err.print(f"generating {users:,} people (seed {seed}) in {data}")
    make(users, seed, data)
    record = _run_pipeline(data / "sources.yaml", ws)
    _print_run(record)
    version, profiles = _catalogue(cfg, ws)
    _print_catalogue(version, profiles)
    from personaops.evaluation import persona_agreement

    ari = persona_agreement(ws, data / "truth")
    out.print(f"agreement with the planted personas: adjusted Rand index {ari:.3f}")
    out.print(f"try: personas get {_example_person(ws)} --json")


def _example_person(ws: Workspace) -> str:
    import pandas as pd

    mapping = pd.read_parquet(ws.identity / "record_person.parquet", columns=["source", "person_id"])
    return str(mapping[mapping["source"] == mapping["source"].iloc[0]]["person_id"].iloc[0])


@app.command()
def get(
    person_id: Optional[str] = typer.Argument(None, help="a person_id"),
    source: Optional[str] = typer.Option(None, help="look the person up by a source record: the source name"),
    key: Optional[str] = typer.Option(None, help="... and its record key"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """A person's persona features, read from the Feast online store."""
    import pandas as pd

    from personaops.feature_store import ASSIGNMENT_FEATURES, read_persona

    cfg, ws = _workspace()
    record = None
    if person_id is None:
        if not (source and key):
            raise PersonaOpsError("Give a PERSON_ID, or --source NAME and --key VALUE of one of their records.")
        from personaops.identity_store import lookup_record

        record = lookup_record(ws, source, key)  # through the identity graph's record -> person map
        person_id = record["person_id"]
    elif source or key:
        raise PersonaOpsError("Give either a PERSON_ID or --source NAME and --key VALUE, not both.")
    row = read_persona(ws, cfg, [person_id]).iloc[0]
    if pd.isna(row["persona_id"]):
        if record is not None:
            raise NotFoundError(
                f"Record {record['source']}:{record['source_key']} belongs to person {person_id}, who has no published persona in {ws.root}; "
                "a run that stopped after the resolve stage leaves the map ahead of the online store, so re-run `personas run`."
            )
        raise NotFoundError(f"Person {person_id!r} has no persona in the online store at {ws.root}; check the id (see `personas assignments`).")
    result = {"person_id": person_id, **{f: row[f] for f in ASSIGNMENT_FEATURES}}
    result["persona_id"], result["model_version"] = int(result["persona_id"]), int(result["model_version"])
    result["confidence"] = float(result["confidence"])
    if as_json:
        _emit_json(result)
    else:
        out.print(f"{person_id}: persona {result['persona_id']} '{result['persona_name']}' (confidence {result['confidence']:.2f}, model v{result['model_version']})")


@app.command()
def assignments(out_file: Path = typer.Option(..., "--out", help="Parquet file to write")) -> None:
    """Every source record with its person and persona (source, source_key, person_id, persona_id,
    persona_name, confidence, model_version)."""
    import pandas as pd

    from personaops.feature_store import ASSIGNMENT_VIEW

    cfg, ws = _workspace()
    table, mapping = ws.feature_table(ASSIGNMENT_VIEW), ws.identity / "record_person.parquet"
    if not table.exists() or not mapping.exists():
        raise NotFoundError(f"No published assignments in {ws.root}; run `personas run` first.")
    published = pd.read_parquet(table)
    from models import registry

    version = registry.alias_version(ws, cfg.model.registered_name, registry.CHAMPION)
    current = published[published["model_version"] == version]
    records = pd.read_parquet(mapping, columns=["source", "source_key", "person_id"])
    result = records.merge(current[["person_id", "persona_id", "persona_name", "confidence", "model_version"]], on="person_id", how="left")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    result.to_parquet(out_file, index=False)
    out.print(f"wrote {len(result):,} records ({result['person_id'].nunique():,} persons) to {out_file}")


@app.command()
def personas(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """The persona catalogue of the champion model."""
    cfg, ws = _workspace()
    version, profiles = _catalogue(cfg, ws)
    if as_json:
        _emit_json({"model": cfg.model.registered_name, "version": version, "personas": profiles})
    else:
        _print_catalogue(version, profiles)


@app.command()
def serve(
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port"),
    host: str = typer.Option("127.0.0.1", help="interface to listen on (0.0.0.0 for every interface)"),
    insecure_dev: bool = typer.Option(False, "--insecure-dev", help="serve without API tokens (local development only)"),
    workers: int = typer.Option(1, min=1, max=64, help="server processes (about one per CPU core for throughput)"),
) -> None:
    """The HTTP API: personas by person, batch lookup, catalogue, health, Prometheus metrics (docs/api.md)."""
    import uvicorn

    from personaops.api import api_tokens, create_app

    cfg, ws = _workspace()
    application = create_app(cfg, insecure_dev=insecure_dev)
    if not api_tokens(cfg):
        err.print("warning: --insecure-dev: no API token configured, every caller is admin; never expose this server.")
    err.print(f"serving {ws.root} on http://{host}:{port} (OpenAPI: http://{host}:{port}/docs)")
    if workers > 1:  # each worker process builds its app from the same workspace and tokens
        from personaops.api import SERVE_INSECURE_ENV

        os.environ[SERVE_INSECURE_ENV] = "1" if insecure_dev else ""
        # uvicorn kills a worker that misses its 5 s health ping; a worker importing Feast on a busy
        # host misses it and the workers restart in a loop (seen at load average 25): allow 60 s.
        # personaops.http_workers: uvicorn's workers, each accepting so that connections spread evenly.
        from personaops.http_workers import run_workers

        run_workers("personaops.api:app_from_environment", factory=True, host=host, port=port, workers=workers, log_level="warning", access_log=False, timeout_worker_healthcheck=60)
        return
    application.state.service.warm()
    uvicorn.run(application, host=host, port=port, log_level="warning", access_log=False)


@app.command()
def monitor(
    sources: Optional[Path] = typer.Option(None, "--sources", help="new data to bring in first (ingest, resolve, features; no training)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Drift, quality and bias checks of the champion on the current data, the policy's decision,
    and its action (none, retrain, rollback or review)."""
    cfg, ws = _workspace()
    if sources is not None:
        from personaops.sources import load_sources

        load_sources(sources)
    summary = _run_flow("monitor_personas", ws, sources=str(sources.resolve()) if sources else None)
    if as_json:
        _emit_json(summary)
        return
    results = summary["results"]
    out.print(f"monitoring run {summary['run_id']} of persona-model v{summary['model_version']}: action [bold]{summary['action']}[/]")
    for f in summary["fired"]:
        out.print(f"  {f['rule']}: {f['metric']} = {f['value']:.3f} (threshold {f['threshold']}) -> {f['action']}")
    out.print(f"  drifted feature columns {results['features']['drifted_share']:.0%}; persona mix TVD {results['persona_mix']['total_variation']:.3f}")
    if summary["outcome"]:
        out.print(f"  done: {json.dumps(summary['outcome'], default=str)[:300]}")
    out.print(f"reports: {summary['reports']['html']} and {summary['reports']['monitoring']}")


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Registered versions of the persona model and their aliases."""
    from models import registry

    cfg, ws = _workspace()
    found = registry.versions(ws, cfg.model.registered_name)
    if as_json:
        _emit_json([v.__dict__ for v in found])
        return
    table = Table("version", "aliases", "MLflow run")
    for v in found:
        table.add_row(str(v.version), ", ".join(v.aliases), v.run_id)
    out.print(table)


@models_app.command("promote")
def models_promote(
    version: int,
    reason: str = typer.Option("manual promotion", help="why (kept in the alias history)"),
    force: bool = typer.Option(False, "--force", help="promote even if the promotion gate fails (give a --reason)"),
) -> None:
    """Make VERSION the champion if it passes the promotion gate, and publish its assignments at once."""
    from models import registry

    from models.promotion import promote_or_hold

    cfg, ws = _workspace()
    who = _guard(cfg, ws, "models promote")
    if force and reason == "manual promotion":
        raise PersonaOpsError("--force needs a --reason saying why the promotion gate is overridden.")
    result = promote_or_hold(ws, cfg, version, reason, who.actor, force=force)
    checks = "; ".join(_check_text(c) for c in result["checks"])
    if result["status"] == "held":  # a high-stakes change: it waits for a human decision
        held = result["promotion"]
        out.print(f"{cfg.model.registered_name} v{version} is held for review as {held['id']} ({'; '.join(held['why'])}); "
                  f"`personas promotion approve {held['id']} --reason ...` promotes it, `reject` discards it.", highlight=False)
        return
    if result["status"] == "unchanged":
        out.print(f"{cfg.model.registered_name} v{version} is already champion.")
        return
    out.print(f"{cfg.model.registered_name} v{version} is now champion ({checks})", highlight=False)
    _republish(cfg, ws)


def _check_text(check: dict) -> str:
    from models.promotion import GateCheck

    return str(GateCheck(**check))


@models_app.command("history")
def models_history(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every alias move (who, when, from which version to which, why), oldest first."""
    from models import registry

    cfg, ws = _workspace()
    moves = registry.alias_history(ws, cfg.model.registered_name)
    if as_json:
        _emit_json(moves)
        return
    table = Table("when", "alias", "from", "to", "who", "why")
    for m in moves:
        table.add_row(m["at"][:19], m["alias"], str(m.get("previous") or "-"), str(m["version"]), m.get("actor", ""), m.get("reason", ""))
    out.print(table)


@models_app.command("show")
def models_show(version: int, as_json: bool = typer.Option(False, "--json")) -> None:
    """One version: its aliases, MLflow run, metrics and parameters."""
    from models import registry

    cfg, ws = _workspace()
    found = {v.version: v for v in registry.versions(ws, cfg.model.registered_name)}
    if version not in found:
        raise NotFoundError(f"Model '{cfg.model.registered_name}' has no version {version} (versions: {sorted(found) or 'none'}); see `personas models list`.")
    run = registry.client(ws).get_run(found[version].run_id)
    info = {
        "version": version,
        "aliases": found[version].aliases,
        "run_id": run.info.run_id,
        "metrics": run.data.metrics,
        "params": run.data.params,
        "tags": {k: v for k, v in run.data.tags.items() if k.startswith("personas.")},
    }
    if as_json:
        _emit_json(info)
        return
    out.print(f"[bold]{cfg.model.registered_name} v{version}[/]  aliases: {', '.join(info['aliases']) or '-'}  run: {info['run_id']}")
    for k, v in sorted(info["metrics"].items()):
        out.print(f"  {k:<24} {v:.4g}")


@models_app.command("rollback")
def models_rollback(
    to: Optional[int] = typer.Option(None, "--to", help="version to roll back to (default: the previous champion)"),
    reason: str = typer.Option("manual rollback", help="why (kept in the alias history)"),
) -> None:
    """Move `champion` back (to the previous champion or --to VERSION) and re-publish its assignments."""
    from models import registry

    cfg, ws = _workspace()
    who = _guard(cfg, ws, "models rollback")
    current = registry.alias_version(ws, cfg.model.registered_name, registry.CHAMPION)
    target = to if to is not None else registry.previous_champion(ws, cfg.model.registered_name)
    if current is None or target is None:
        raise NotFoundError(f"Model '{cfg.model.registered_name}' has no earlier champion to roll back to in {ws.root}; see `personas models history`.")
    registry.set_alias(ws, cfg.model.registered_name, registry.CHAMPION, target, f"rollback: {reason}", actor=who.actor)
    out.print(f"{cfg.model.registered_name}: champion v{current} -> v{target}")
    _republish(cfg, ws)


def _republish(cfg: PersonasConfig, ws: Workspace) -> None:
    """Publish the (new) champion's assignments for the latest run's features, at once."""
    record = ws.latest_run_record()
    if record is None:
        return
    ws.prefect.mkdir(parents=True, exist_ok=True)
    from flows.build_personas import publish_champion

    with ws.lock("personas models"):
        done = publish_champion(cfg, ws, record["features"]["as_of"])
    out.print(f"published {done['rows']:,} persons online for model version {done['model_version']}")


# --- held promotions: high-stakes changes wait for a human (models/promotion.py) -----------------
promotion_app = typer.Typer(no_args_is_help=True, help="Promotions held for review: list, approve (promote and publish) or reject.")
app.add_typer(promotion_app, name="promotion")


@promotion_app.command("list")
def promotion_list(show_all: bool = typer.Option(False, "--all", help="decided ones too"), as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Promotions waiting for review (with --all: approved and rejected ones too)."""
    from models import promotion

    cfg, ws = _workspace()
    found = promotion.promotions(ws) if show_all else promotion.pending(ws)
    if as_json:
        _emit_json(found)
        return
    table = Table("id", "status", "version", "champion then", "held because", "requested by", title=f"{len(found)} promotions of {cfg.model.registered_name}")
    for p in found:
        table.add_row(p["id"], p["status"], f"v{p['version']}", f"v{p['champion']}" if p.get("champion") else "-", "; ".join(p["why"]), f"{p['requested_by']} {p['history'][0]['at'][:16]}")
    out.print(table)


@promotion_app.command("approve")
def promotion_approve(promotion_id: str = typer.Argument(..., metavar="ID"), reason: str = typer.Option(..., "--reason", help="why (kept in the audit log)")) -> None:
    """Approve a held promotion: its version becomes champion and its assignments are published at once."""
    from models import promotion

    cfg, ws = _workspace()
    who = _guard(cfg, ws, "promotion approve")

    def publish() -> dict:
        record = ws.latest_run_record()
        if record is None:
            return {}
        ws.prefect.mkdir(parents=True, exist_ok=True)
        from flows.build_personas import publish_champion

        with ws.lock("personas promotion"):
            return publish_champion(cfg, ws, record["features"]["as_of"])

    done = promotion.approve(ws, cfg, promotion_id, who.actor, reason, publish)
    out.print(f"approved {promotion_id}: {done['model']} v{done['version']} is champion; published {done.get('published') or 0:,} persons online.", highlight=False)


@promotion_app.command("reject")
def promotion_reject(promotion_id: str = typer.Argument(..., metavar="ID"), reason: str = typer.Option(..., "--reason", help="why (kept in the audit log)")) -> None:
    """Reject a held promotion: its version is tagged rejected and can never become champion."""
    from models import promotion

    cfg, ws = _workspace()
    who = _guard(cfg, ws, "promotion reject")
    done = promotion.reject(ws, promotion_id, who.actor, reason)
    out.print(f"rejected {promotion_id}: {done['model']} v{done['version']} stays out of service for good; the champion is unchanged.", highlight=False)


# --- identity: merge/split history and the review queue ---------------------------------------
identity_app = typer.Typer(no_args_is_help=True, help="The identity graph: person id history.")
review_app = typer.Typer(no_args_is_help=True, help="Grey-band identity matches awaiting a human decision.")
app.add_typer(identity_app, name="identity")
app.add_typer(review_app, name="review")


@identity_app.command("history")
def identity_history(person_id: str, as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Merge and split events that involved PERSON_ID, oldest first, with their evidence."""
    from personaops import identity_store

    _, ws = _workspace()
    events = identity_store.history(ws, person_id)
    if as_json:
        _emit_json(events)
        return
    if not events:
        out.print(f"{person_id}: no merges or splits; the id has been stable since it was created.")
    for e in events:
        out.print(f"[bold]{e['event']}[/] in run {e['run_id']} ({e['at']}): {', '.join(e['old_ids'])} -> {', '.join(e['new_ids'])}")
        for ev in e.get("evidence", [])[:5]:
            out.print("   " + ", ".join(f"{k}={v}" for k, v in ev.items() if v not in ("", None)), highlight=False)


@review_app.command("list")
def review_list(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Open pairs of the latest run whose match probability fell in the review band."""
    from personaops import identity_store

    _, ws = _workspace()
    queue = identity_store.review_queue(ws)
    if as_json:
        _emit_json(queue.drop(columns=["run_id"], errors="ignore").to_dict("records"))
        return
    table = Table(title=f"Review queue ({len(queue)} open pairs)")
    for col in ("pair", "probability", "agreed", "left", "right"):
        table.add_column(col)
    for row in queue.itertuples(index=False):
        table.add_row(row.pair_id, f"{row.match_probability:.3f}", row.agreed, f"{row.record_l}\n{row.values_l}", f"{row.record_r}\n{row.values_r}")
    out.print(table)


@review_app.command("accept")
def review_accept(pair_id: str = typer.Argument(..., metavar="PAIR")) -> None:
    """Accept PAIR: its two records are merged by this and every later run."""
    from personaops import identity_store

    _, ws = _workspace()
    entry = identity_store.decide(ws, pair_id, "accept")
    out.print(f"accepted {pair_id} ({entry['record_l']} + {entry['record_r']}); the next run merges them.")


@review_app.command("reject")
def review_reject(pair_id: str = typer.Argument(..., metavar="PAIR")) -> None:
    """Reject PAIR: its two records are never merged again."""
    from personaops import identity_store

    _, ws = _workspace()
    entry = identity_store.decide(ws, pair_id, "reject")
    out.print(f"rejected {pair_id} ({entry['record_l']} / {entry['record_r']}); later runs keep them apart.")


audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log of the workspace.")
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Check the audit log's hash chain; exit 1 if any entry was edited, removed, inserted or reordered."""
    from personaops import audit

    _, ws = _workspace()
    verdict = audit.verify(ws.audit_log)
    if as_json:
        _emit_json(verdict.as_dict())
    elif verdict.ok:
        out.print(f"audit log intact: {verdict.entries} entries, chain and head agree.")
    else:
        for p in verdict.problems:
            err.print(f"[red]line {p['line']}[/]: {p['problem']}", highlight=False)
    if not verdict.ok:
        if not as_json:
            err.print(f"The audit log {ws.audit_log} has been tampered with ({len(verdict.problems)} problems above); "
                      "restore it from a backup and investigate who changed it.")
        raise typer.Exit(1)


@audit_app.command("minimisation")
def audit_minimisation(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Search every derived store (features, online store, MLflow, reports, graph, catalogue, runs) for
    the lake's raw identifiers and sensitive attributes outside the bias audit; exit 1 on any finding."""
    from personaops import minimisation

    _, ws = _workspace()
    result = minimisation.check(ws)
    if as_json:
        _emit_json(result)
    else:
        counts = result["identifiers_from_lake"]
        out.print(f"searched {result['files_scanned']} files outside {', '.join(result['allowed_zones'])} for {counts['emails']:,} emails, "
                  f"{counts['phones']:,} phones and {counts['names']:,} names of the lake; sensitive attributes {', '.join(result['sensitive_attributes']) or 'none'} "
                  f"checked in {result['sensitive_checked']['tables']} tables, {result['sensitive_checked']['model_input_lists']} model input lists, "
                  f"{result['sensitive_checked']['online_tables']} online tables.", highlight=False)
        for f in result["identifier_findings"] + result["sensitive_findings"]:
            err.print(f"[red]{f['path']}[/]: {f['kind']} " + (f"({f['cells']} values)" if "cells" in f else f"{f.get('attribute')} as {f.get('column')}"), highlight=False)
    if not result["ok"]:
        if not as_json:
            found = len(result["identifier_findings"]) + len(result["sensitive_findings"])
            err.print(f"Data minimisation fails in {ws.root}: {found} findings above; remove the identifiers or sensitive columns from those stores (or erase and re-run).", highlight=False)
        raise typer.Exit(1)
    if not as_json:
        out.print("data minimisation holds: no raw identifier or sensitive attribute outside the lake, the identity stage and the bias audit.")


@audit_app.command("log")
def audit_log(event: str = typer.Option(None, "--event", help="only entries of this event type"),
              limit: int = typer.Option(50, "--limit", help="newest N entries (0 for all)"),
              as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """The newest audit entries: who did what, when."""
    from personaops import audit

    _, ws = _workspace()
    entries = audit.read(ws.audit_log, event)
    if limit:
        entries = entries[-limit:]
    if as_json:
        _emit_json(entries)
        return
    for e in entries:
        details = ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("seq", "at", "event", "prev", "hash"))
        out.print(f"{e.get('seq', '?'):>5} {e.get('at', '')[:19]} [bold]{e.get('event')}[/] {details}", highlight=False)


# --- lineage and replay (docs/governance.md) ---------------------------------------------------
@app.command()
def explain(person_id: str = typer.Argument(..., metavar="PERSON_ID"), as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Where PERSON_ID's served persona comes from: features, source rows, identity evidence, model, run and snapshot."""
    from personaops import lineage

    cfg, ws = _workspace()
    _guard(cfg, ws, "explain")  # the API's explain endpoint needs analyst too
    doc = lineage.explain(cfg, ws, person_id)
    if as_json:
        _emit_json(doc)
        return
    p = doc["persona"]
    out.print(f"[bold]{person_id}[/]: persona {p['persona_id']} {p.get('persona_name') or ''} (confidence {p['confidence']}) "
              f"from model {doc['model']} v{doc['model_version']} (MLflow run {doc['mlflow_run_id']}), run {doc['pipeline_run_id']}, snapshot {doc['snapshot_id']}", highlight=False)
    if doc["traits"]:
        out.print(f"  persona traits: {doc['traits'].get('persona_top_traits')}", highlight=False)
    for view, info in doc["features"].items():
        if info["values"]:
            shown = ", ".join(f"{k}={v}" for k, v in list(info["values"].items())[:8])
            out.print(f"  {view}{' (model input)' if info['model_input'] else ''}: {shown}", highlight=False)
    out.print(f"  source rows ({len(doc['source_rows'])}; the first 3 of each source shown, all with --json):")
    shown_per_source: dict[str, int] = {}
    for r in doc["source_rows"]:
        shown_per_source[r["source"]] = shown_per_source.get(r["source"], 0) + 1
        if shown_per_source[r["source"]] > 3:
            continue
        out.print(f"    {r['source']} batch {r['batch_id']} row {r['row_number']} hash {r['row_hash']} key {r['source_key']} "
                  f"linked by {r['linked_by']}{'' if r['in_lake'] else ' [red]NOT IN LAKE[/]'}", highlight=False)
    out.print(f"  identity evidence: {len(doc['identity']['edges'])} edges, linked by {', '.join(doc['identity']['linked_by'])}", highlight=False)


@app.command()
def replay(run_id: str = typer.Argument(..., metavar="RUN_ID"), as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Re-score RUN_ID's stored inputs with the model version it published; exit 1 unless every assignment matches bit for bit."""
    from personaops import lineage

    cfg, ws = _workspace()
    result = lineage.replay(cfg, ws, run_id)
    if as_json:
        _emit_json(result)
    elif result["reproduced"]:
        out.print(f"run {run_id} reproduced: {result['persons']:,} assignments identical (persona_id and confidence bit for bit), "
                  f"model v{result['model_version']}, snapshot {result['snapshot_id']}.", highlight=False)
        if result.get("erased_persons"):
            out.print(f"not reproduced: {len(result['erased_persons'])} persons erased after the run ({', '.join(result['erased_persons'][:5])}; "
                      f"erasures {', '.join(result['erasures'])}): their inputs are gone, by design.", highlight=False)
    if not result["reproduced"]:
        err.print(f"Replay of run {run_id} differs from what it published for {result['persons'] - result['identical']:,} of {result['persons']:,} persons "
                  f"(e.g. {', '.join(result['differing_persons'][:3])}); the model version or stored inputs are not those the run used.", highlight=False)
        raise typer.Exit(1)


# --- downstream: the example churn model that uses personas as features -----------------------
downstream_app = typer.Typer(no_args_is_help=True, help="The example downstream churn model (personas as features, via Feast).")
app.add_typer(downstream_app, name="downstream")


@downstream_app.command("train")
def downstream_train(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Train the churn classifier from a Feast point-in-time join; compare with and without persona features (MLflow)."""
    from models.downstream import train as train_churn

    cfg, ws = _workspace()
    result = train_churn(ws, cfg).to_dict()
    if as_json:
        _emit_json(result)
        return
    m = result["metrics"]
    out.print(f"{result['model']} v{result['version']} on {result['persons']:,} persons (churn rate {result['churn_rate']:.1%}), MLflow run {result['run_id'][:8]}")
    out.print(f"  ROC AUC  with personas {m['roc_auc_with_persona']:.3f}   without {m['roc_auc_without_persona']:.3f}")
    out.print(f"  log loss with personas {m['log_loss_with_persona']:.3f}   without {m['log_loss_without_persona']:.3f}")


@downstream_app.command("predict")
def downstream_predict(
    person_ids: list[str] = typer.Argument(..., help="person ids"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Churn probability of persons, from their features and persona read online through Feast."""
    from models.downstream import predict as predict_churn

    cfg, ws = _workspace()
    frame = predict_churn(ws, cfg, person_ids)
    rows = [
        {"person_id": r.person_id, "churn_probability": None if r.churn_probability != r.churn_probability else round(float(r.churn_probability), 4),
         "persona_id": None if r.persona_id != r.persona_id or r.persona_id is None else int(r.persona_id)}
        for r in frame.itertuples(index=False)
    ]  # fmt: skip
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        if r["churn_probability"] is None:
            out.print(f"{r['person_id']}: no features online (unknown person?)")
        else:
            out.print(f"{r['person_id']}: churn probability {r['churn_probability']:.2f} (persona {r['persona_id']})")


def _quiet_libraries() -> None:
    """Library deprecation chatter and INFO logs are not for the person at the terminal."""
    if os.environ.get("PERSONAS_VERBOSE"):
        return
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # also for the Prefect server subprocess
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # MLflow re-levels its logger on import
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    # Some libraries re-add their own warning filters on import; route whatever still gets
    # through to a silent logger instead of the terminal.
    logging.captureWarnings(True)
    py_warnings = logging.getLogger("py.warnings")
    py_warnings.addHandler(logging.NullHandler())
    py_warnings.propagate = False
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("feast").setLevel(logging.WARNING)


def _crash_log(exc: BaseException) -> Path:
    import traceback
    from datetime import datetime, timezone

    home = Path(os.environ.get("PERSONAS_HOME", ".personas"))
    path = home / "logs" / f"crash-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
    except OSError:
        path = Path("/dev/stderr")
    return path


# --- business questions on the persona graph (personaops/insights.py) -------------------------
ask_app = typer.Typer(no_args_is_help=True, help="Business questions answered from the persona graph of the latest run.")
app.add_typer(ask_app, name="ask")


def _print_frame(title: str, frame, formats: dict[str, str]) -> None:
    table = Table(title=title)
    for col in frame.columns:
        table.add_column(col)
    for row in frame.itertuples(index=False):
        table.add_row(*[(formats.get(c, "{}").format(v) if v == v and v is not None else "-") for c, v in zip(frame.columns, row)])
    out.print(table)


@ask_app.command("campaign")
def ask_campaign(campaign: str = typer.Argument(..., metavar="CAMPAIGN"), as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Which personas are most likely to convert after CAMPAIGN: uplift vs holdout, 95% intervals, ranked."""
    from personaops import insights

    _, ws = _workspace()
    table = insights.ask_campaign(ws, campaign)
    if as_json:
        _emit_json({"campaign": campaign, "personas": insights.frame_records(table)})
        return
    pct = "{:.1%}"
    _print_frame(f"Campaign {campaign}: conversion uplift by persona (vs holdout of the same persona)",
                 table[["persona_id", "persona_name", "exposed", "conversion_rate", "holdout", "holdout_rate", "uplift", "ci_low", "ci_high", "p_value"]],
                 {"conversion_rate": pct, "holdout_rate": pct, "uplift": "{:+.1%}", "ci_low": "{:+.1%}", "ci_high": "{:+.1%}", "p_value": "{:.2g}"})  # fmt: skip


@ask_app.command("churn-signals")
def ask_churn_signals(
    top: int = typer.Option(15, "--top", help="signals to show"),
    both: bool = typer.Option(False, "--both", help="rank protective signals with the risky ones"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Which relational signals correlate with churn (odds ratio within personas, 95% CI, BH-adjusted p)."""
    from personaops import insights

    _, ws = _workspace()
    table = insights.ask_churn_signals(ws, top, "both" if both else "risk")
    if as_json:
        _emit_json({"signals": insights.frame_records(table)})
        return
    _print_frame("Graph signals ranked by association with churn (within personas)",
                 table[["rank", "signal", "persons", "churn_rate_with", "churn_rate_without", "odds_ratio", "ci_low", "ci_high", "p_adjusted", "same_as"]],
                 {"churn_rate_with": "{:.1%}", "churn_rate_without": "{:.1%}", "odds_ratio": "{:.2f}", "ci_low": "{:.2f}", "ci_high": "{:.2f}", "p_adjusted": "{:.2g}"})  # fmt: skip


@ask_app.command("intents")
def ask_intents(persona: str = typer.Argument(..., metavar="PERSONA"), as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Which intents drive PERSONA's tickets (id or name): share of its tickets and lift vs everyone."""
    from personaops import insights

    _, ws = _workspace()
    table = insights.ask_intents(ws, persona)
    if as_json:
        _emit_json({"persona": persona, "intents": insights.frame_records(table)})
        return
    _print_frame(f"Intents of persona {persona}'s tickets", table[["intent_id", "label", "texts", "persons", "share", "lift", "example"]], {"share": "{:.1%}", "lift": "{:.2f}"})


@ask_app.command("changes")
def ask_changes(persona: str = typer.Argument(..., metavar="PERSONA"), as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """What changed for PERSONA since the previous run: size, churn, conversion, flags, intents, signals."""
    from personaops import insights

    _, ws = _workspace()
    result = insights.ask_changes(ws, persona)
    _emit_json(result)  # nested deltas read best as JSON; --json is accepted for symmetry


@ask_app.command("opportunities")
def ask_opportunities(
    persona: str = typer.Option(None, "--persona", help="only this persona's people (id or name)"),
    top: int = typer.Option(15, "--top", help="people to list"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Who is likely to take the expansion offer: personas by mean propensity, then the top people with their reasons."""
    from personaops import insights

    cfg, ws = _workspace()
    _guard(cfg, ws, "ask opportunities")  # person ids with reasons: the API's endpoint needs analyst too
    result = insights.ask_opportunities(ws, persona, top)
    if as_json:
        _emit_json(result)
        return
    import pandas as pd

    m = result["metrics"]
    _print_frame(f"Opportunity: propensity to convert on {result['campaign']} if offered (amber at >= {result['threshold']}; "
                 f"held-out ROC AUC {m.get('roc_auc', float('nan')):.3f}, ECE {m.get('ece', float('nan')):.3f})",
                 pd.DataFrame(result["personas"])[["persona_id", "persona_name", "persons", "exposed", "conversion_rate", "mean_probability", "amber", "amber_share"]],
                 {"conversion_rate": "{:.1%}", "mean_probability": "{:.1%}", "amber_share": "{:.1%}"})  # fmt: skip
    _print_frame("People most likely to convert", pd.DataFrame(result["people"]), {"opportunity_probability": "{:.1%}"})



# --- consent and erasure (docs/governance.md) ---------------------------------------------------
consent_app = typer.Typer(no_args_is_help=True, help="The consent registry: per person and purpose, granted / denied / revoked.")
app.add_typer(consent_app, name="consent")


@consent_app.command("set")
def consent_set(
    person_id: str = typer.Argument(..., metavar="PERSON_ID"),
    purpose: str = typer.Option(..., "--purpose", help="analytics, personalisation or marketing"),
    status: str = typer.Option(..., "--status", help="granted, denied or revoked"),
    reason: str = typer.Option("", "--reason", help="why (kept in the history and the audit log)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Record PERSON_ID's consent for a purpose; revoking analytics or personalisation removes them from the online store at once."""
    from personaops import consent

    cfg, ws = _workspace()
    who = _guard(cfg, ws, "consent set")
    row = consent.set_consent(ws, cfg, person_id, purpose, status, reason, actor=who.actor)
    if as_json:
        _emit_json(row)
        return
    deleted = sum(row["online_deleted"].values())
    out.print(f"{row['person_id']}: {row['purpose']} {row['status']} at {row['recorded_at'][:19]}" + (f"; {deleted} online rows deleted" if deleted else ""), highlight=False)


@consent_app.command("show")
def consent_show(person_id: str = typer.Argument(..., metavar="PERSON_ID"), as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """PERSON_ID's current consent per purpose and the full history."""
    from personaops import consent

    _, ws = _workspace()
    doc = {"person_id": person_id, "current": consent.status_of(ws, person_id), "history": consent.history(ws, person_id).drop(columns=["seq"]).to_dict("records")}
    if as_json:
        _emit_json(doc)
        return
    for purpose, info in doc["current"].items():
        out.print(f"{purpose:<16} {info['status']:<8} " + ("(default: no record)" if info["default"] else f"since {str(info['recorded_at'])[:19]} {info['reason']}"), highlight=False)
    for h in doc["history"]:
        out.print(f"  {h['recorded_at'][:19]} {h['purpose']} -> {h['status']} by {h['actor'] or '?'} ({h['origin']}) {h['reason']}", highlight=False)


@consent_app.command("list")
def consent_list(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Current consent records (persons without a record have the default status)."""
    from personaops import consent

    _, ws = _workspace()
    rows = consent.current(ws).to_dict("records")
    if as_json:
        _emit_json({"default": consent.default_status(), "records": rows})
        return
    out.print(f"default for persons without a record: {consent.default_status()}; {len(rows)} records", highlight=False)
    for r in rows:
        out.print(f"{r['person_id']} {r['purpose']:<16} {r['status']:<8} {r['recorded_at'][:19]} {r['reason']}", highlight=False)


@consent_app.command("load")
def consent_load(path: Path = typer.Argument(..., metavar="CSV", help="columns person_id, purpose, status[, reason]")) -> None:
    """Load consent records from a CSV file (appended to the history, each audited)."""
    from personaops import consent

    cfg, ws = _workspace()
    _guard(cfg, ws, "consent load")
    if not path.is_file():
        raise PersonaOpsError(f"Consent file {path} does not exist; give a CSV with person_id, purpose and status columns.")
    out.print(f"{consent.load_source(ws, cfg, path)} consent records loaded from {path}", highlight=False)


@app.command()
def erase(
    person_id: str = typer.Argument(None, metavar="[PERSON_ID]"),
    source: str = typer.Option(None, "--source", help="source name of one of the person's records"),
    key: str = typer.Option(None, "--key", help="that record's key"),
    reason: str = typer.Option("", "--reason", help="why (kept in the audit log)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Erase a person (PERSON_ID, or --source NAME --key VALUE): their rows and derived data everywhere, keeping only a hashed tombstone."""
    from personaops import erasure

    if person_id and (source or key):
        raise PersonaOpsError("Give either a PERSON_ID or --source NAME and --key VALUE, not both.")
    cfg, ws = _workspace()
    who = _guard(cfg, ws, "erase")
    result = erasure.erase(ws, cfg, person_id=person_id, source=source, key=key, actor=who.actor, reason=reason)
    if as_json:
        _emit_json(result)
        return
    shown = ", ".join(f"{k} {v}" for k, v in result.items() if k not in ("erasure_id", "person_id"))
    out.print(f"erased {result['person_id']} (erasure {result['erasure_id']}): {shown}", highlight=False)


@app.command()
def deploy(
    sources: Path = typer.Option(None, "--sources", envvar="PERSONAS_SOURCES", help="sources.yaml the deployed builds read (default $PERSONAS_SOURCES)"),
    pool: str = typer.Option("personas", "--pool", envvar="PERSONAS_WORK_POOL", help="Prefect process work pool (created when absent)"),
    suffix: str = typer.Option("", "--suffix", envvar="PERSONAS_DEPLOYMENT_SUFFIX", help="appended to every deployment name (e.g. -staging): another set on the same server"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Register the Prefect deployments of flows/prefect.yaml (nightly and on-demand builds, monitoring every 6 h, retrain on drift) and their work pool on the Prefect server (PREFECT_API_URL)."""
    from flows.deploy import deploy as register
    from flows.deploy import worker_command

    if sources is None:
        raise PersonaOpsError("Give the sources.yaml the deployed builds should read with --sources FILE (or PERSONAS_SOURCES).")
    _, ws = _workspace()
    result = register(sources, ws.root, pool=pool, suffix=suffix)
    ws.audit("deployed", api_url=result["api_url"], work_pool=pool, deployments=[d["name"] for d in result["deployments"]])
    if as_json:
        _emit_json(result)
        return
    out.print(f"work pool {pool} on {result['api_url']} ({'created' if result['work_pool_created'] else 'already there'}); workspace {result['home']}", highlight=False, soft_wrap=True)
    for d in result["deployments"]:
        out.print(f"  {d['name']:<48} {', '.join(d['schedules']) or 'on demand'}", highlight=False)
    for a in result["automations"]:
        out.print(f"  automation {a['name']} ({'enabled' if a['enabled'] else 'disabled'})", highlight=False)
    out.print("start a worker with: prefect " + " ".join(worker_command(pool)[1:]) + "  (or infra/services.sh start --with worker)", highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry: set the environment before any library reads it, map errors to one line."""
    _quiet_libraries()
    os.environ.setdefault("FEAST_USAGE", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        _, ws = _workspace()  # PREFECT_HOME must point at the workspace before prefect is imported
        app()
    except PersonaOpsError as exc:
        err.print(f"error: {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except Exception as exc:  # a bug, not a user error: one line here, the traceback in a log file
        from personaops.retry import service_failure

        lost = service_failure(exc)  # a production service went away mid-run: say which, and what to do
        if lost:
            err.print(f"error: {lost}", highlight=False, soft_wrap=True)
            sys.exit(1)
        log = _crash_log(exc)
        err.print(f"error: internal error ({exc.__class__.__name__}: {str(exc)[:200]}); the traceback is in {log} — please report it.", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
