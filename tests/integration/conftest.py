"""The integration tests' shared pipeline run (`prefect_api`, `generated`, `pipeline`) lives in
tests/conftest.py, so the browser test under tests/e2e reuses the same session run."""
