"""`personas deploy` without a server: the deployments file it registers, and its one-line errors."""

from __future__ import annotations

from flows.deploy import DEFAULT_POOL, deployment_specs
from tests.helpers import run_cli


def test_every_deployment_goes_to_one_pool_named_as_in_compose_and_kubernetes():
    from tests.services import ROOT

    spec = deployment_specs()
    assert {d["work_pool"]["name"] for d in spec["deployments"]} == {DEFAULT_POOL} == {"personas"}
    for manifest in ("infra/compose.yaml", "infra/k8s/prefect.yaml"):
        assert f"--pool {DEFAULT_POOL} --type process" in (ROOT / manifest).read_text()


def test_a_suffix_renames_deployments_and_triggers_but_keeps_entrypoints_and_schedules():
    plain, other = deployment_specs(), deployment_specs("staging-pool", "-staging")
    for a, b in zip(plain["deployments"], other["deployments"]):
        assert b["name"] == a["name"] + "-staging" and b["work_pool"]["name"] == "staging-pool"
        assert (a["entrypoint"], a.get("schedules"), a["parameters"]) == (b["entrypoint"], b.get("schedules"), b["parameters"])
        assert [t["name"] + "-staging" for t in a.get("triggers") or []] == [t["name"] for t in b.get("triggers") or []]


def test_deploy_without_a_prefect_server_is_one_line(monkeypatch, capsys, tmp_path):
    for name in ("PREFECT_API_URL", "PERSONAS_PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "sources.yaml").write_text("sources: []\n")
    code, _, err = run_cli(monkeypatch, capsys, "deploy", "--sources", str(tmp_path / "sources.yaml"), home=tmp_path / "ws")
    assert code == 1 and "PREFECT_API_URL is unset" in err and len(err.strip().splitlines()) == 1


def test_deploy_needs_sources_and_a_server_that_answers(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("PERSONAS_SOURCES", raising=False)
    code, _, err = run_cli(monkeypatch, capsys, "deploy", home=tmp_path / "ws")
    assert code == 1 and "--sources" in err
    code, _, err = run_cli(monkeypatch, capsys, "deploy", "--sources", str(tmp_path / "missing.yaml"), home=tmp_path / "ws")
    assert code == 1 and "does not exist" in err
    (tmp_path / "sources.yaml").write_text("sources: []\n")
    from tests.helpers import free_port

    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")  # nothing listens there
    code, _, err = run_cli(monkeypatch, capsys, "deploy", "--sources", str(tmp_path / "sources.yaml"), home=tmp_path / "ws")
    assert code == 1 and "does not answer" in err and len(err.strip().splitlines()) == 1
