"""mkdocs hook: the CLI and HTTP API reference pages, generated from the code at every build.

`cli-reference.md` comes from typer's own doc generator run on `personaops.cli`; `api-reference.md`
and `openapi.json` from the FastAPI app's OpenAPI document. Nothing is committed, so the pages
cannot go stale when commands or routes change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]


def cli_reference() -> str:
    """Markdown for every `personas` command (typer's `utils docs`)."""
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "typer", "personaops.cli", "utils", "docs", "--name", "personas", "--title", "CLI reference"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"typer could not document personaops.cli: {done.stderr.strip()[-500:]}")
    intro = (
        "Generated from the code at docs build time (`typer personaops.cli utils docs`). "
        "The `--json` output of each command is described in [CLI](cli.md).\n\n"
    )
    body = done.stdout.strip()
    title, _, rest = body.partition("\n")
    return f"{title}\n\n{intro}{rest.strip()}\n"


def openapi_document() -> dict:
    """The OpenAPI document of `personas serve` (an app on an empty, unused workspace)."""
    from personaops.api import create_app
    from personaops.config import PersonasConfig

    with tempfile.TemporaryDirectory() as home:
        app = create_app(PersonasConfig(home=Path(home)), insecure_dev=True, environ={})
        return app.openapi()


def _schema_name(schema: dict) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if schema.get("type") == "array" and "items" in schema:
        return f"array of {_schema_name(schema['items'])}"
    return schema.get("type", "object")


def api_reference(doc: dict) -> str:
    """Markdown of every route: method, path, summary, description, parameters, body, responses."""
    lines = [
        "# HTTP API reference",
        "",
        f"Generated from the OpenAPI document of `personas serve` ({doc['info']['title']} {doc['info']['version']}) at docs build time; "
        "the raw document is [openapi.json](openapi.json), and a running server also serves it at `/openapi.json` with interactive docs at `/docs`. "
        "Tokens and roles are explained in [HTTP API](api.md).",
        "",
    ]
    for path, methods in sorted(doc["paths"].items()):
        for method, op in methods.items():
            lines += [f"## `{method.upper()} {path}`", ""]
            if op.get("summary"):
                lines += [f"**{op['summary']}**", ""]
            if op.get("description"):
                lines += [" ".join(op["description"].split()), ""]
            if op.get("tags"):
                lines += [f"Tags: {', '.join(op['tags'])}.", ""]
            if op.get("security"):
                lines += ["Needs `Authorization: Bearer <token>`.", ""]
            params = op.get("parameters", [])
            if params:
                lines += ["| parameter | in | required | type | description |", "|---|---|---|---|---|"]
                for p in params:
                    desc = " ".join(p.get("description", p.get("schema", {}).get("description", "")).split())
                    lines.append(f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} | {_schema_name(p.get('schema', {}))} | {desc} |")
                lines.append("")
            body = op.get("requestBody", {}).get("content", {})
            for media, spec in body.items():
                lines += [f"Request body ({media}): `{_schema_name(spec.get('schema', {}))}`.", ""]
            responses = op.get("responses", {})
            if responses:
                lines += ["| status | meaning | body |", "|---|---|---|"]
                for status, r in responses.items():
                    content = r.get("content", {})
                    schema = next(iter(content.values()), {}).get("schema", {}) if content else {}
                    lines.append(f"| {status} | {r.get('description', '')} | {('`' + _schema_name(schema) + '`') if schema else ''} |")
                lines.append("")
    schemas = doc.get("components", {}).get("schemas", {})
    if schemas:
        lines += ["## Schemas", ""]
        for name, schema in sorted(schemas.items()):
            lines += [f"### `{name}`", ""]
            props = schema.get("properties", {})
            if props:
                required = set(schema.get("required", []))
                lines += ["| field | type | required | description |", "|---|---|---|---|"]
                for field, spec in props.items():
                    kind = _schema_name(spec) if "anyOf" not in spec else " or ".join(_schema_name(s) for s in spec["anyOf"])
                    lines.append(f"| `{field}` | {kind} | {'yes' if field in required else 'no'} | {' '.join(spec.get('description', '').split())} |")
                lines.append("")
    return "\n".join(lines).replace("|  |", "| |") + "\n"


def on_files(files, config):
    """Add the generated pages to the site as if they were files in docs/."""
    doc = openapi_document()
    files.append(File.generated(config, "cli-reference.md", content=cli_reference()))
    files.append(File.generated(config, "api-reference.md", content=api_reference(doc)))
    files.append(File.generated(config, "openapi.json", content=json.dumps(doc, indent=2)))
    return files
