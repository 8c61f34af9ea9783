"""Shared test set-up: offline, quiet libraries; every test gets its own workspace."""

import os

os.environ.setdefault("FEAST_USAGE", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

# --- one real pipeline run, shared by the integration and browser (e2e) tests -----------------
# Generated data (with a corrupted ticket file), a temporary workspace, Prefect's test harness
# (started once per session), and the real Feast, MLflow, Evidently, faiss and embedding model.
import pytest  # noqa: E402

PIPELINE_USERS = 1200


@pytest.fixture(scope="session")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def generated(tmp_path_factory):
    from personaops.generate import generate
    from tests.helpers import corrupt_rows

    out = tmp_path_factory.mktemp("sources")
    generate(PIPELINE_USERS, 11, out)
    with (out / "tickets.csv").open("ab") as fh:
        fh.write(b"".join(corrupt_rows()))  # the last one is a truncated line without newline
    return out


@pytest.fixture(scope="session")
def pipeline(prefect_api, generated, tmp_path_factory):
    """(workspace path, run record) of one build_personas flow run."""
    from flows.build_personas import build_personas

    home = tmp_path_factory.mktemp("workspace")
    record = build_personas(sources=str(generated / "sources.yaml"), home=str(home))
    return home, record
