"""The persona catalogue page: what a product manager opens first.

One card per persona of the champion model (name, description, size and its trend across model
versions, distinguishing traits, quotes, KPIs with 95% intervals, amber-flag counts, drift and
bias status of the last monitoring run), a 2-D map of people coloured by persona, the persona mix
over monitoring runs, and links to the Evidently reports and the MLflow run.

Everything is rendered server-side as HTML with inline SVG: no JavaScript, no CDN, so the page
works offline, in `personas serve` (`/`) and as the static `reports/<run_id>/catalog.html` each
run writes. `collect_catalog` gathers the numbers; `render_catalog` draws them. Sensitive
breakdowns (persona shares by sensitive group) are drawn only for `analyst`/`admin` callers of
the served page and never into the static file.
"""


import json
import math
import os
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from personaops.config import PersonasConfig
from personaops.errors import NotFoundError
from personaops.roles import allows, token_role
from personaops.workspace import Workspace

STATIC_NAME = "catalog.html"
MAP_POINTS = 1500  # people drawn on the 2-D map (a seeded sample)
TREND_VERSIONS = 12  # newest model versions shown in the size trend
MLFLOW_UI_ENV = "PERSONAS_MLFLOW_UI_URL"
# Colour-blind-friendly palette (Okabe-Ito, then Tableau); unassigned people are grey.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000", "#4E79A7", "#F28E2B", "#59A14F", "#B07AA1", "#76B7B2", "#EDC948")
UNASSIGNED_COLOUR = "#B8B8B8"


def colour(persona_id: int, order: list[int]) -> str:
    """The persona's colour: stable for a catalogue (by position of its id in `order`)."""
    if persona_id < 0:
        return UNASSIGNED_COLOUR
    return PALETTE[order.index(persona_id) % len(PALETTE)] if persona_id in order else PALETTE[persona_id % len(PALETTE)]


@dataclass
class Catalog:
    """The numbers the page shows; JSON-able."""

    model: str
    version: int
    run_id: str
    experiment_id: str
    profiles: list[dict]
    size_trend: dict[int, list[tuple[int, int]]]  # persona_id -> [(model version, size)]
    mix_over_time: list[dict]  # [{"run_id", "model_version", "shares": {persona_id: share}}]
    map_points: list[tuple[float, float, int]]  # (x, y, persona_id)
    monitoring: dict | None  # last monitoring.json (results, decision) + its run_id
    decision: dict | None  # last line of monitoring/decisions.jsonl
    amber: dict[int, dict[str, int]] | None  # persona_id -> {flag kind: persons}; None: not computed
    pipeline_run: str | None  # the last pipeline run id
    mlflow_ui: str = ""
    persons: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    amber_people: dict[int, int] | None = None  # persona_id -> people with any amber flag (a person with two flags counts once)
    business: dict[int, dict] | None = None  # persona_id -> business KPIs of the latest insights run (feature adoption, conversion lift, NPS)

    @property
    def order(self) -> list[int]:
        return [p["persona_id"] for p in self.profiles if p["persona_id"] >= 0]

    @property
    def mlflow_run_url(self) -> str:
        return f"{self.mlflow_ui.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"


# --- collecting -----------------------------------------------------------------------------
def _monitoring_runs(ws: Workspace) -> list[tuple[str, dict]]:
    """(run id, monitoring.json) of every monitoring pass, oldest first (run ids sort by time)."""
    out = []
    if ws.reports.is_dir():
        for path in sorted(ws.reports.glob("*/monitoring.json")):
            try:
                out.append((path.parent.name, json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError):
                continue  # a pass interrupted while writing: leave it out
    return out


def _last_decision(ws: Workspace) -> dict | None:
    path = ws.root / "monitoring" / "decisions.jsonl"
    if not path.exists():
        return None
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None


def _amber_table(ws: Workspace):
    """The newest amber-flag table: the insights stage's per-run `amber_flags` table, else the
    `person_flags` feature table; None while no flags have been computed."""
    runs = sorted((ws.lake / "insights").glob("run_id=*/amber_flags.parquet")) if (ws.lake / "insights").is_dir() else []
    if runs:
        return runs[-1]
    table = ws.feature_table("person_flags")
    return table if table.exists() else None


def _amber_flagged(ws: Workspace, assignments):
    """One row per person with a persona: persona_id and a True/False column per flag kind
    (`<kind>_flag` columns of the table, e.g. risk, engagement; True = amber); None while the
    workspace has no flags ("not computed")."""
    import pandas as pd

    path = _amber_table(ws)
    if path is None or assignments is None:
        return None
    table = pd.read_parquet(path)
    kinds = [c for c in table.columns if c.endswith("_flag")]
    if "person_id" not in table.columns or not kinds:
        return None
    joined = table[["person_id", *kinds]].merge(assignments[["person_id", "persona_id"]], on="person_id", how="inner")
    for kind in kinds:
        joined[kind] = joined[kind].astype(str).str.lower().isin(("amber", "true", "1"))
    return joined.drop_duplicates("person_id").rename(columns={k: k[: -len("_flag")] for k in kinds})


def _amber_counts(ws: Workspace, assignments) -> dict[int, dict[str, int]] | None:
    """persona_id -> {flag kind: persons flagged amber} (kinds from the table's `<kind>_flag`
    columns, e.g. risk, engagement); None while the workspace has no flags ("not computed")."""
    flagged = _amber_flagged(ws, assignments)
    if flagged is None:
        return None
    out: dict[int, dict[str, int]] = {int(p): {} for p in assignments["persona_id"].unique()}
    for kind in [c for c in flagged.columns if c not in ("person_id", "persona_id")]:
        for persona, n in flagged[flagged[kind]].groupby("persona_id").size().items():
            out.setdefault(int(persona), {})[kind] = int(n)
    return out


def _business_kpis(ws: Workspace) -> dict[int, dict] | None:
    """persona_id -> the latest insights run's business KPIs (insights.business_kpis); None before
    the flags stage has run."""
    import pandas as pd

    runs = sorted((ws.lake / "insights").glob("run_id=*/persona_summary.parquet")) if (ws.lake / "insights").is_dir() else []
    if not runs:
        return None
    summary = pd.read_parquet(runs[-1])
    if "business_kpis" not in summary.columns:
        return None
    return {int(r.persona_id): json.loads(r.business_kpis) for r in summary.itertuples() if isinstance(r.business_kpis, str)}


def _amber_people(ws: Workspace, assignments) -> dict[int, int] | None:
    """persona_id -> people with at least one amber flag (the per-kind counts overlap: a person
    can be amber for risk and engagement at once); None while no flags exist."""
    flagged = _amber_flagged(ws, assignments)
    if flagged is None:
        return None
    kinds = [c for c in flagged.columns if c not in ("person_id", "persona_id")]
    counts = flagged[flagged[kinds].any(axis=1)].groupby("persona_id").size()
    return {int(p): int(counts.get(p, 0)) for p in assignments["persona_id"].unique()}


def _map_points(ws: Workspace, cfg: PersonasConfig, seed: int) -> list[tuple[float, float, int]]:
    """People on the first two components of the champion's representation, with their persona."""
    import numpy as np

    from models import registry
    from personaops import features as F

    _, model = registry.load_champion(ws, cfg.model.registered_name)
    scorer = model.unwrap_python_model().scorer
    _, frame, _ = F.current_model_frame(ws)
    if frame.empty:
        return []
    rng = np.random.default_rng(seed)
    sample = frame.iloc[np.sort(rng.choice(len(frame), size=min(MAP_POINTS, len(frame)), replace=False))]
    x = scorer.represent(sample)
    labels = scorer.predict(sample)["persona_id"].to_numpy()
    y = x[:, 1] if x.shape[1] > 1 else np.zeros(len(x))
    return [(float(a), float(b), int(p)) for a, b, p in zip(x[:, 0], y, labels)]


def collect_catalog(cfg: PersonasConfig, ws: Workspace, with_map: bool = True) -> Catalog:
    """Everything the catalogue shows, read from the workspace: the champion's profiles (MLflow),
    every version's persona sizes, the monitoring passes and decisions, amber flags if any."""
    import pandas as pd

    from models import registry
    from models.train import load_profiles

    name = cfg.model.registered_name
    version = registry.alias_version(ws, name, registry.CHAMPION)
    if version is None:
        raise NotFoundError(f"No champion persona model in {ws.root}; run `personas run` (or `personas demo`) before opening the catalogue.")
    client = registry.client(ws)
    run_id = registry.version_run_id(ws, name, version)
    experiment_id = client.get_run(run_id).info.experiment_id
    profiles = load_profiles(ws, run_id)

    trend: dict[int, list[tuple[int, int]]] = {}
    for v in registry.versions(ws, name)[-TREND_VERSIONS:]:
        for p in profiles if v.version == version else load_profiles(ws, v.run_id):
            trend.setdefault(int(p["persona_id"]), []).append((v.version, int(p["size"])))

    monitoring_runs = _monitoring_runs(ws)
    mix = [
        {"run_id": rid, "model_version": m.get("results", {}).get("model_version"), "shares": {int(k): float(s) for k, s in m.get("results", {}).get("persona_mix", {}).get("current_share", {}).items()}}
        for rid, m in monitoring_runs
        if m.get("results", {}).get("persona_mix")
    ]
    last = monitoring_runs[-1] if monitoring_runs else None
    assignments_path = ws.feature_table("persona_assignment")
    assignments = None
    if assignments_path.exists():
        table = pd.read_parquet(assignments_path, columns=["person_id", "persona_id", "model_version"])
        assignments = table[table["model_version"] == version]
    latest = ws.latest_run_record()
    return Catalog(
        model=name,
        version=version,
        run_id=run_id,
        experiment_id=str(experiment_id),
        profiles=profiles,
        size_trend=trend,
        mix_over_time=mix,
        map_points=_map_points(ws, cfg, cfg.model.seed) if with_map else [],
        monitoring={"run_id": last[0], **last[1]} if last else None,
        decision=_last_decision(ws),
        amber=_amber_counts(ws, assignments),
        amber_people=_amber_people(ws, assignments),
        business=_business_kpis(ws),
        pipeline_run=latest.get("run_id") if latest else None,
        mlflow_ui=os.environ.get(MLFLOW_UI_ENV, "http://127.0.0.1:5000"),
        persons=sum(int(p["size"]) for p in profiles),
    )


# --- drawing (inline SVG) -------------------------------------------------------------------
def _fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}g}"


def traits_svg(traits: list[dict], width: int = 340) -> str:
    """Diverging bars: each trait's standardised difference (z) from everyone, axis at 0."""
    if not traits:
        return '<p class="muted">No distinguishing traits.</p>'
    row, label_w = 22, 150
    half = (width - label_w - 40) / 2
    zmax = max(1.0, max(abs(t["z"]) for t in traits))
    axis = label_w + half
    parts = [f'<svg class="chart traits" data-chart="traits" role="img" aria-label="distinguishing traits" width="{width}" height="{row * len(traits) + 18}" viewBox="0 0 {width} {row * len(traits) + 18}">']
    for i, t in enumerate(traits):
        y = i * row + 4
        w = abs(t["z"]) / zmax * half
        x = axis if t["z"] >= 0 else axis - w
        fill = "#0072B2" if t["z"] >= 0 else "#D55E00"
        parts.append(
            f'<g class="trait" data-feature="{escape(t["feature"])}" data-z="{t["z"]}"><title>{escape(t["label"])}: z = {t["z"]:+.2f} '
            f'(persona mean {t["persona_mean"]:.4g} vs everyone {t["population_mean"]:.4g})</title>'
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" class="lbl">{escape(t["label"][:24])}</text>'
            f'<rect x="{x:.1f}" y="{y}" width="{max(w, 1):.1f}" height="{row - 8}" fill="{fill}"/>'
            # values sit right of the bar (positive) or right of the axis (negative): never over the labels
            f'<text x="{(x + w + 4) if t["z"] >= 0 else (axis + 4):.1f}" y="{y + 13}" class="val">{t["z"]:+.2f}</text></g>'
        )
    bottom = row * len(traits) + 4
    parts.append(f'<line x1="{axis}" y1="0" x2="{axis}" y2="{bottom}" stroke="#555"/><text x="{axis}" y="{bottom + 12}" text-anchor="middle" class="axis">z vs everyone</text></svg>')
    return "".join(parts)


def trend_svg(points: list[tuple[int, int]], current: int, width: int = 220, height: int = 70) -> str:
    """Persona size by model version (bars; the champion's bar is dark)."""
    if not points:
        return ""
    top = max(s for _, s in points) or 1
    bar = (width - 10) / max(len(points), 1)
    parts = [f'<svg class="chart trend" data-chart="trend" role="img" aria-label="size by model version" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for i, (v, s) in enumerate(points):
        h = s / top * (height - 30)
        x = 5 + i * bar
        parts.append(
            f'<g class="trend-bar" data-version="{v}" data-size="{s}"><title>model v{v}: {s:,} people</title>'
            f'<rect x="{x + 2:.1f}" y="{height - 16 - h:.1f}" width="{max(bar - 4, 2):.1f}" height="{h:.1f}" fill="{"#333" if v == current else "#9ab"}"/>'
            f'<text x="{x + bar / 2:.1f}" y="{height - 4}" text-anchor="middle" class="axis">v{v}</text>'
            f'<text x="{x + bar / 2:.1f}" y="{height - 19 - h:.1f}" text-anchor="middle" class="axis">{s:,}</text></g>'
        )
    return "".join(parts) + "</svg>"


def interval_svg(value: float, lo: float, hi: float, scale_max: float, width: int = 120) -> str:
    """One KPI's point estimate and 95% interval on a 0..scale_max axis."""
    if any(v is None or math.isnan(v) for v in (value, lo, hi)) or scale_max <= 0:
        return ""
    def px(v: float) -> float:
        return 4 + min(max(v / scale_max, 0.0), 1.0) * (width - 8)
    return (
        f'<svg class="chart interval" data-chart="interval" width="{width}" height="14" viewBox="0 0 {width} 14">'
        f'<line x1="4" y1="7" x2="{width - 4}" y2="7" stroke="#ddd"/>'
        f'<line x1="{px(lo):.1f}" y1="7" x2="{px(hi):.1f}" y2="7" stroke="#0072B2" stroke-width="4"/>'
        f'<circle cx="{px(value):.1f}" cy="7" r="3.5" fill="#000"/></svg>'
    )


def map_svg(points: list[tuple[float, float, int]], names: dict[int, str], order: list[int], width: int = 640, height: int = 420) -> str:
    """Scatter of people on the first two components, coloured by persona, with a legend."""
    if not points:
        return '<p class="muted">No people to draw.</p>'
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    plot_w, pad = width - 240, 12
    def sx(v: float) -> float:
        return pad + (v - x0) / ((x1 - x0) or 1) * (plot_w - 2 * pad)
    def sy(v: float) -> float:
        return height - pad - (v - y0) / ((y1 - y0) or 1) * (height - 2 * pad)
    parts = [f'<svg class="chart map" data-chart="map" data-points="{len(points)}" role="img" aria-label="people by persona" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    parts.append(f'<rect x="0" y="0" width="{plot_w}" height="{height}" fill="#fafafa" stroke="#ddd"/>')
    for x, y, p in sorted(points, key=lambda t: t[2] >= 0):  # outliers underneath
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.2" fill="{colour(p, order)}" fill-opacity="0.7"/>')
    counts: dict[int, int] = {}
    for _, _, p in points:
        counts[p] = counts.get(p, 0) + 1
    for i, p in enumerate(sorted(counts, key=lambda q: (q < 0, q))):
        y = 16 + i * 18
        parts.append(
            f'<g class="legend" data-persona-id="{p}"><rect x="{plot_w + 10}" y="{y - 9}" width="10" height="10" fill="{colour(p, order)}"/>'
            f'<text x="{plot_w + 26}" y="{y}" class="lbl">{escape(names.get(p, f"persona {p}")[:34])} ({counts[p]})</text></g>'
        )
    return "".join(parts) + "</svg>"


def mix_svg(mix: list[dict], names: dict[int, str], order: list[int], width: int = 560, height: int = 240) -> str:
    """Stacked bars: each monitoring run's persona shares (champion's assignment of current data)."""
    if not mix:
        return '<p class="muted">No monitoring run yet.</p>'
    plot_h, plot_w = height - 40, width - 240
    bar = plot_w / len(mix)
    parts = [f'<svg class="chart mix" data-chart="mix" data-runs="{len(mix)}" role="img" aria-label="persona mix over time" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    personas: list[int] = []
    for i, m in enumerate(mix):
        y = 10.0
        x = i * bar
        parts.append(f'<g class="mix-run" data-run-id="{escape(m["run_id"])}">')
        for p, share in sorted(m["shares"].items(), key=lambda kv: (kv[0] < 0, kv[0])):
            if p not in personas:
                personas.append(p)
            h = share * plot_h
            parts.append(
                f'<rect data-persona-id="{p}" data-share="{share}" x="{x + 3:.1f}" y="{y:.1f}" width="{max(bar - 6, 2):.1f}" height="{h:.1f}" fill="{colour(p, order)}">'
                f'<title>{escape(m["run_id"])} (model v{m["model_version"]}): {escape(names.get(p, f"persona {p}"))} {share:.1%}</title></rect>'
            )
            y += h
        label = m["run_id"][4:13] if len(m["run_id"]) >= 13 else m["run_id"]  # MMDDTHHMM of the run id
        parts.append(f'<text x="{x + bar / 2:.1f}" y="{height - 16}" text-anchor="middle" class="axis">{escape(label)}</text><text x="{x + bar / 2:.1f}" y="{height - 4}" text-anchor="middle" class="axis">v{m["model_version"]}</text></g>')
    for i, p in enumerate(sorted(personas, key=lambda q: (q < 0, q))):
        y = 16 + i * 18
        parts.append(f'<rect x="{plot_w + 10}" y="{y - 9}" width="10" height="10" fill="{colour(p, order)}"/><text x="{plot_w + 26}" y="{y}" class="lbl">{escape(names.get(p, f"persona {p}")[:36])}</text>')
    return "".join(parts) + "</svg>"


# --- status per card ------------------------------------------------------------------------
def drift_status(catalog: Catalog, persona_id: int) -> dict:
    """The last monitoring pass's view of one persona: share at training vs now."""
    if not catalog.monitoring:
        return {"state": "not monitored", "detail": "no monitoring run yet"}
    results = catalog.monitoring.get("results", {})
    mix = results.get("persona_mix", {})
    ref = mix.get("reference_share", {}).get(str(persona_id), mix.get("reference_share", {}).get(persona_id))
    cur = mix.get("current_share", {}).get(str(persona_id), mix.get("current_share", {}).get(persona_id))
    action = (catalog.monitoring.get("decision") or {}).get("action", "none")
    detail = f"share {ref:.1%} at training, {cur:.1%} now" if ref is not None and cur is not None else "not in the last monitoring run"
    state = "ok" if action == "none" else action
    return {"state": state, "detail": detail, "reference_share": ref, "current_share": cur, "run_id": catalog.monitoring.get("run_id")}


def bias_status(catalog: Catalog, persona_id: int) -> dict:
    """Largest demographic-parity difference of this persona over sensitive attributes (0-1)."""
    bias = (catalog.monitoring or {}).get("results", {}).get("bias")
    if not bias:
        return {"state": "not audited", "max_dp_difference": None}
    diffs = [per[str(persona_id)]["dp_difference"] for per in bias.get("by_attribute", {}).values() if str(persona_id) in per]
    if not diffs:
        return {"state": "not audited", "max_dp_difference": None}
    fired = {f.get("rule") for f in (catalog.monitoring.get("decision") or {}).get("fired", [])}
    state = "alert" if any("bias" in (r or "") for r in fired) else "ok"
    return {"state": state, "max_dp_difference": max(diffs)}


def sensitive_breakdown(catalog: Catalog, persona_id: int) -> dict[str, dict[str, float]]:
    """attribute -> {group: share of the group assigned to this persona} (analyst role only)."""
    bias = (catalog.monitoring or {}).get("results", {}).get("bias") or {}
    out = {}
    for attr, per in bias.get("by_attribute", {}).items():
        if str(persona_id) in per:
            out[attr] = per[str(persona_id)]["rates"]
    return out


# --- rendering ------------------------------------------------------------------------------
KPI_LABELS = {"engagement_events": "engagement (events per person)", "survey_score": "survey score", "campaign_conversion_rate": "campaign conversion"}


def kpi_rows(profile: dict, scales: dict[str, float]) -> list[dict]:
    rows = []
    for key, k in profile["kpis"].items():
        rate = key.endswith("_rate")
        lo, hi = k["ci95"]
        rows.append(
            {
                "key": key,
                "label": KPI_LABELS.get(key, key[: -len("_rate")].replace("_", " ") + " rate" if rate else key.replace("_", " ")),
                "value": k["value"],
                "text": f"{k['value']:.1%}" if rate else f"{k['value']:.3g}",
                "interval": f"{lo:.1%}–{hi:.1%}" if rate else f"{_fmt(lo)}–{_fmt(hi)}",
                "n": k["n"],
                "svg": interval_svg(k["value"], lo, hi, 1.0 if rate else scales.get(key, 1.0)),
            }
        )
    return rows


def render_catalog(catalog: Catalog, role: str = "reader", static: bool = False, links: dict[str, str] | None = None) -> str:
    """The catalogue as one self-contained HTML page. `static`: the file written with a run (no
    sensitive breakdowns whatever the role); `links`: URLs of the Evidently reports by name."""
    from jinja2 import Environment, PackageLoader, select_autoescape
    from markupsafe import Markup

    env = Environment(loader=PackageLoader("personaops", "templates"), autoescape=select_autoescape(["html", "j2"]))
    names = {p["persona_id"]: p["name"] for p in catalog.profiles}
    order = catalog.order
    # KPI axes shared across cards, so intervals compare at a glance.
    scales: dict[str, float] = {}
    for p in catalog.profiles:
        for key, k in p["kpis"].items():
            scales[key] = max(scales.get(key, 0.0), float(k["ci95"][1]) if k["ci95"][1] == k["ci95"][1] else float(k["value"]))
    show_sensitive = allows(role, "analyst") and not static
    cards = []
    for p in catalog.profiles:
        pid = p["persona_id"]
        amber = None if catalog.amber is None else catalog.amber.get(pid, {})
        cards.append(
            {
                "p": p,
                "colour": colour(pid, order),
                "traits_svg": Markup(traits_svg(p["traits"])),
                "trend_svg": Markup(trend_svg(catalog.size_trend.get(pid, []), catalog.version)),
                "trend": catalog.size_trend.get(pid, []),
                "kpis": [{**r, "svg": Markup(r["svg"])} for r in kpi_rows(p, scales)],
                "amber": amber,
                "amber_total": None if amber is None else sum(amber.values()),  # flags (a person may carry several)
                "amber_people": None if amber is None or catalog.amber_people is None else catalog.amber_people.get(pid, 0),
                # share of the persona amber for opportunity (likely to take the expansion offer)
                "opportunity_share": amber["opportunity"] / p["size"] if amber and "opportunity" in amber and p["size"] else None,
                "business": None if catalog.business is None else catalog.business.get(pid),
                "drift": drift_status(catalog, pid),
                "bias": bias_status(catalog, pid),
                "sensitive": sensitive_breakdown(catalog, pid) if show_sensitive else None,
            }
        )
    return env.get_template("catalog.html.j2").render(
        c=catalog,
        cards=cards,
        role=role,
        static=static,
        show_sensitive=show_sensitive,
        map_svg=Markup(map_svg(catalog.map_points, names, order)),
        mix_svg=Markup(mix_svg(catalog.mix_over_time, names, order)),
        links=links or {},
        decision=catalog.decision,
    )


def report_links(catalog: Catalog, relative_to: Path | None = None, prefix: str = "/reports") -> dict[str, str]:
    """URLs of the last monitoring pass's Evidently reports: relative file names for the static
    page (it sits beside them), `/reports/<run>/<file>` routes for the served one."""
    if not catalog.monitoring:
        return {}
    run = catalog.monitoring["run_id"]
    files = {"Evidently drift report": "drift.html", "Evidently snapshot (JSON)": "drift.json", "Monitoring summary (JSON)": "monitoring.json"}
    if relative_to is not None:
        folder = relative_to
        return {label: (name if folder.name == run else f"../{run}/{name}") for label, name in files.items()}
    return {label: f"{prefix}/{run}/{name}" for label, name in files.items()}


def write_catalog(cfg: PersonasConfig, ws: Workspace, run_id: str) -> Path:
    """Write the static catalogue of the current champion to `reports/<run_id>/catalog.html`
    (no sensitive breakdowns; charts inline, links relative to the reports folder)."""
    catalog = collect_catalog(cfg, ws)
    catalog.pipeline_run = run_id  # the run record is written after this page
    folder = ws.reports / run_id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STATIC_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(render_catalog(catalog, role="reader", static=True, links=report_links(catalog, folder)), encoding="utf-8")
    tmp.replace(path)
    return path


# --- serving --------------------------------------------------------------------------------
TOKEN_COOKIE = "personas_token"
REPORT_FILES = {"drift.html": "text/html", "drift.json": "application/json", "monitoring.json": "application/json", "summary.json": "application/json", STATIC_NAME: "text/html"}


def add_catalog_routes(app, cfg: PersonasConfig, ws: Workspace, tokens: dict[str, str]) -> None:
    """`GET /` (the catalogue) and `GET /reports/{run_id}/{name}` (the Evidently reports it links to).

    Browsers cannot send a bearer header when following a link, so these pages also accept the
    token once as `?token=` (then kept in an HttpOnly, SameSite=Strict cookie and dropped from the
    URL by a redirect) or from that cookie. Unknown or missing tokens get a sign-in form (401)."""
    import re
    import threading

    from fastapi import Request
    from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

    cache: dict[tuple, Catalog] = {}
    lock = threading.Lock()

    def role_of(token: str | None) -> str | None:
        if not tokens:  # --insecure-dev with nothing configured
            return "admin"
        return token_role(token, tokens)

    def caller(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return role_of(header[7:].strip())
        return role_of(request.cookies.get(TOKEN_COOKIE))

    def sign_in(message: str) -> HTMLResponse:
        page = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>PersonaOps · sign in</title></head>'
            '<body style="font-family:sans-serif;max-width:30em;margin:4em auto"><h1>Persona catalogue</h1>'
            f"<p>{escape(message)}</p><form method=\"get\" action=\"/\"><label>API token <input name=\"token\" type=\"password\" autocomplete=\"off\"></label> "
            '<button type="submit">Open</button></form></body></html>'
        )
        return HTMLResponse(page, status_code=401)

    def current() -> Catalog:
        from models import registry

        version = registry.alias_version(ws, cfg.model.registered_name, registry.CHAMPION)
        monitored = _monitoring_runs(ws)
        runs = sorted(ws.runs.glob("*.json")) if ws.runs.is_dir() else []
        key = (version, monitored[-1][0] if monitored else None, runs[-1].name if runs else None)
        with lock:
            if key not in cache:
                cache.clear()
                cache[key] = collect_catalog(cfg, ws)
            return cache[key]

    @app.get("/", response_class=HTMLResponse, tags=["catalogue"], include_in_schema=True)
    def catalogue_page(request: Request, token: str | None = None):
        """The persona catalogue page (HTML). Sign in with `?token=<API token>` once, or send the
        bearer header; analysts and admins also see persona shares by sensitive group."""
        if token is not None:
            if role_of(token) is None:
                return sign_in("Unknown API token; ask an admin for a valid one.")
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response
        role = caller(request)
        if role is None:
            return sign_in("Enter an API token to open the persona catalogue.")
        catalog = current()
        return HTMLResponse(render_catalog(catalog, role=role, static=False, links=report_links(catalog)))

    run_pattern = re.compile(r"^[A-Za-z0-9_.\-]{1,80}$")

    @app.get("/reports/{run_id}/{name}", tags=["catalogue"])
    def report_file(request: Request, run_id: str, name: str):
        """A monitoring run's Evidently report or summary (reader role), as linked from the catalogue."""
        if caller(request) is None:
            return sign_in("Enter an API token to open this report.")
        if not run_pattern.match(run_id) or run_id in (".", "..") or name not in REPORT_FILES:
            raise NotFoundError(f"No report {name!r} of run {run_id!r}; open the catalogue at / for the links.")
        path = ws.reports / run_id / name
        if not path.is_file():
            raise NotFoundError(f"No report {name!r} of run {run_id!r} in {ws.root}; open the catalogue at / for the links.")
        return FileResponse(path, media_type=REPORT_FILES[name])
