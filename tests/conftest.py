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


# --- parallel runs: `make test` is `pytest -n 2 --dist loadgroup` (pytest-xdist) ----------------
# Tests go to the workers in groups, so a module's (module-scoped) set-up runs on one worker only:
# - "pipeline": every module whose tests or fixtures take the session `pipeline` run (one worker
#   builds it once; those modules keep their order, e.g. test_lineage after test_pipeline's re-run);
# - "spark": the modules that start the process's one local Spark session;
# - otherwise the test's module.
# The groups are handed out longest first (LONG below: session-4 serial module times), then the
# rest in collection order. xdist's own `xdist_group` marks do not group under pytest 9.2 (it sets
# an attribute pytest no longer reads), hence the scheduler below. Plain `pytest` (no -n) is unchanged.
import re  # noqa: E402
from pathlib import Path  # noqa: E402

ROOTDIR = Path(__file__).resolve().parents[1]
SPARK_MODULES = {"tests/integration/test_spark_path.py", "tests/integration/test_identity_spark.py"}
# Groups other than "pipeline" that take minutes, longest first.
LONG = [
    "tests/integration/test_prefect_deployment.py",
    "spark",
    "tests/integration/test_incremental.py",
    "tests/integration/test_load.py",
    "tests/integration/test_faults.py",
    "tests/integration/test_crash_resume.py",
    "tests/integration/test_production_profile.py",
    "tests/e2e/test_cli.py",
]
_USES_PIPELINE = re.compile(r"def \w+\([^)]*\bpipeline\b")
_groups: dict[str, str] = {}


def xdist_group(nodeid: str) -> str:
    """The group of a test (its node id), from its module's path and source text."""
    module = nodeid.split("::", 1)[0]
    if module not in _groups:
        path = ROOTDIR / module
        text = path.read_text(errors="replace") if path.is_file() else ""
        _groups[module] = "spark" if module in SPARK_MODULES else "pipeline" if _USES_PIPELINE.search(text) else module
    return _groups[module]


def _rank(nodeid: str) -> int:
    group = xdist_group(nodeid)
    return 0 if group == "pipeline" else LONG.index(group) + 1 if group in LONG else len(LONG) + 1


def _grouped(config) -> bool:
    return config.pluginmanager.hasplugin("xdist") and config.getoption("dist", "no") == "loadgroup" and bool(config.getoption("numprocesses", None))


@pytest.hookimpl(optionalhook=True)  # an xdist hook: no error where xdist is not installed
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist", "no") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid)

    config.option.loadscopereorder = False  # the workers' collection order (below), not by test count
    return GroupScheduling(config, log)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """On an xdist worker with --dist loadgroup: the groups in the order they are handed out."""
    if hasattr(config, "workerinput") and getattr(config.option, "loadgroup", False):
        items.sort(key=lambda item: _rank(item.nodeid))  # stable: within a group the collection order stays


_started_services = False


def pytest_configure(config):
    """With xdist, the controller starts the production profile's shared services once (as .ci/run
    does) unless they are already exported: a module that started them itself would stop them at
    its end while another worker still uses them."""
    global _started_services
    if hasattr(config, "workerinput") or not _grouped(config):
        return
    from tests.services import SERVER_VARIABLES, _exports, _run

    wanted = ["PERSONAS_REDIS_URL", "PERSONAS_PG_URL", "PERSONAS_FEAST_REGISTRY_URL", *SERVER_VARIABLES.values(), "PERSONAS_INFRA_DIR"]
    if all(os.environ.get(n) for n in wanted) or (config.args and all(str(a).startswith("tests/unit") for a in config.args)):
        return
    up = _run("status").returncode == 0
    done = _run("start", "--with", "mlflow", "--with", "prefect")
    if done.returncode:
        raise pytest.UsageError(f"infra/services.sh start failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}; run infra/services.sh install, or .ci/run")
    os.environ.update({k: v for k, v in _exports(done.stdout).items() if k.startswith("PERSONAS_")})
    _started_services = not up


def pytest_unconfigure(config):
    if _started_services:
        from tests.services import stop_services

        stop_services()
