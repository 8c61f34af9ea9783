"""personaops.retry: bounded attempts with capped backoff, one-line errors without passwords, and
the translation of a service lost mid-run into one sentence (no services needed)."""

import pytest

from personaops.errors import PersonaOpsError
from personaops.retry import RetryLog, RetryPolicy, ServiceUnavailableError, call_with_retries, check_postgres, service_failure, where


def test_retries_until_success_with_capped_backoff():
    calls, pauses = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("refused")
        return "ok"

    log = RetryLog()
    assert call_with_retries(flaky, "Svc", "start it.", (ConnectionError,), RetryPolicy(attempts=5, first_wait_s=0.5, max_wait_s=0.75), log, sleep=pauses.append) == "ok"
    assert log.attempts == 3 and pauses == [0.5, 0.75]
    assert RetryPolicy(attempts=5, first_wait_s=0.5, max_wait_s=8).waits() == [0.5, 1.0, 2.0, 4.0]


def test_gives_up_after_the_bound_with_one_line_and_no_password():
    pauses = []

    def down():
        raise ConnectionError("cannot reach postgresql://personas:s3cret-pw@db:5432/x\nsecond line")

    with pytest.raises(ServiceUnavailableError) as failed:
        call_with_retries(down, "PostgreSQL at db:5432", "start it, then run again.", (ConnectionError,), RetryPolicy(attempts=3), sleep=pauses.append)
    message = str(failed.value)
    assert isinstance(failed.value, PersonaOpsError) and len(pauses) == 2
    assert message.startswith("PostgreSQL at db:5432 did not answer after 3 attempts") and message.endswith("start it, then run again.")
    assert "\n" not in message and "s3cret-pw" not in message and "personas:***@" in message


def test_other_errors_are_not_retried():
    calls = []

    def bug():
        calls.append(1)
        raise KeyError("x")

    with pytest.raises(KeyError):
        call_with_retries(bug, "Svc", "x.", (ConnectionError,), RetryPolicy(attempts=4), sleep=lambda s: None)
    assert calls == [1]


def test_where_never_shows_credentials():
    assert where("postgresql+psycopg://u:pw@10.0.0.5:5440/db") == "10.0.0.5:5440"
    assert where("http://127.0.0.1:5005") == "127.0.0.1:5005"
    assert where("127.0.0.1:6390") == "127.0.0.1:6390"


def test_postgres_refusing_connections_is_one_line_naming_it():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServiceUnavailableError, match=rf"^PostgreSQL \(the Feast SQL registry\) at 127.0.0.1:{port} did not answer after 2 attempts .*infra/services.sh up postgres"):
        check_postgres(f"postgresql+psycopg://u:hidden@127.0.0.1:{port}/db", RetryPolicy(attempts=2, first_wait_s=0.01))


def test_service_lost_mid_run_is_translated_bugs_are_not():
    from mlflow.exceptions import MlflowException

    env = {"PERSONAS_MLFLOW_TRACKING_URI": "http://127.0.0.1:5005"}
    try:
        try:
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        except ConnectionRefusedError as inner:
            raise MlflowException("API request to http://127.0.0.1:5005/api/2.0/mlflow/runs/log-batch failed with exception HTTPConnectionPool(host='127.0.0.1', port=5005): Max retries exceeded") from inner
    except MlflowException as exc:
        line = service_failure(exc, env)
    assert line.startswith("The MLflow server at 127.0.0.1:5005 stopped answering") and "infra/services.sh up mlflow" in line
    assert service_failure(ValueError("a bug"), env) is None


def test_mlflow_artifact_upload_lost_is_translated_too():
    import requests

    env = {"PERSONAS_MLFLOW_TRACKING_URI": "http://127.0.0.1:5005"}
    lost = requests.exceptions.ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=5005): Max retries exceeded with url: /api/2.0/mlflow-artifacts/artifacts/m")
    assert service_failure(lost, env).startswith("The MLflow server at 127.0.0.1:5005 stopped answering")
    other = requests.exceptions.ConnectionError("HTTPConnectionPool(host='example.org', port=443): Max retries exceeded")
    assert service_failure(other, env) is None
