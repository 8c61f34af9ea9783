"""The documentation site builds warning-free (`mkdocs build --strict`), with the CLI and HTTP
API reference pages generated from the code, and lists every page under docs/."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_docs_build_strict_with_generated_references(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WARNING" not in done.stderr, done.stderr[-3000:]

    pages = sorted(p.stem for p in (ROOT / "docs").glob("*.md"))
    for page in pages:  # every page is built (no nav leaves one out)
        built = site / ("index.html" if page == "index" else f"{page}/index.html")
        assert built.exists(), f"docs/{page}.md was not built"

    cli = (site / "cli-reference" / "index.html").read_text(encoding="utf-8")
    from personaops.cli import app

    import typer

    command = typer.main.get_command(app)
    for name in command.commands:  # every top-level command of the real CLI is documented
        assert f"personas {name}" in cli, f"`personas {name}` missing from the CLI reference"

    api = (site / "api-reference" / "index.html").read_text(encoding="utf-8")
    import json

    doc = json.loads((site / "openapi.json").read_text(encoding="utf-8"))
    assert doc["paths"], "the OpenAPI document has no routes"
    for path, methods in doc["paths"].items():
        for method in methods:
            assert f"{method.upper()} {path}" in api, f"{method.upper()} {path} missing from the API reference"

    index = (site / "index.html").read_text(encoding="utf-8")
    assert "cdnjs" not in index and "googletagmanager" not in index  # the site works offline
