"""Online lookup latency: one person's persona through the Feast SDK in-process, and through
`personas serve` over loopback HTTP.

usage: python bench/serve.py [--persons 100000] [--requests 2000] [--clients 4]

Builds a temporary workspace with the `persona_assignment` view applied and N persons published
by the fast publish (SQLite online store), then measures, for random single persons:
  feast-sdk      FeatureStore.get_online_features(feature service persona_v1), in this process
  http           GET /persons/{id}/persona on `personas serve` (a subprocess on 127.0.0.1),
                 one client, one request at a time
  http-parallel  the same with --clients concurrent clients, for sustained requests/second
Every request is bounded (--requests in total per measurement) and stays on loopback.
Prints p50/p90/p99/max in milliseconds and requests/second.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("FEAST_USAGE", "False")

from personaops.feature_store import ASSIGNMENT_VIEW, SERVING_SERVICE  # noqa: E402
from personaops.online_publish import online_publisher  # noqa: E402
from publish import assignment_store  # noqa: E402

TOKEN = "bench-token"
SERVE = "import sys; from personaops.cli import main; sys.argv = ['personas', 'serve', '--port', sys.argv[1]]; main()"


def summary(name: str, seconds: list[float], wall: float) -> None:
    ms = np.array(seconds) * 1000
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    print(f"{name:<16}{len(ms):>9,}{p50:>9.3f}{p90:>9.3f}{p99:>9.3f}{ms.max():>9.3f}{len(ms) / wall:>11,.0f}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=100_000, help="persons published online")
    parser.add_argument("--requests", type=int, default=2_000, help="lookups per measurement")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients in the parallel run")
    args = parser.parse_args()
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        cfg, ws, rows, store = assignment_store(Path(tmp), args.persons, (SERVING_SERVICE,))
        online_publisher(store).replace(ASSIGNMENT_VIEW, rows)
        ids = rows["person_id"].sample(args.requests, replace=True, random_state=2).tolist()
        print(f"{len(rows):,} persons online in {ws.feast / 'online_store.db'}; {args.requests:,} random single-person lookups each\n")
        print(f"{'path':<16}{'requests':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'req/s':>11}")

        service = store.get_feature_service(SERVING_SERVICE)
        for p in ids[:100]:  # warm-up: registry cache, SQLite pages
            store.get_online_features(features=service, entity_rows=[{"person_id": p}])
        took = []
        start = time.perf_counter()
        for p in ids:
            t = time.perf_counter()
            out = store.get_online_features(features=service, entity_rows=[{"person_id": p}]).to_dict()
            took.append(time.perf_counter() - t)
            assert out["model_version"][0] == 1
        summary("feast-sdk", took, time.perf_counter() - start)

        port = free_port()
        env = dict(os.environ, PERSONAS_HOME=str(ws.root), PERSONAS_API_TOKENS=f"{TOKEN}:reader")
        server = subprocess.Popen([sys.executable, "-c", SERVE, str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            base = f"http://127.0.0.1:{port}"
            headers = {"Authorization": f"Bearer {TOKEN}"}
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code in (200, 503):  # up (no champion here: 503)
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"personas serve did not start: {server.stderr.read()[-2000:] if server.poll() is not None else 'timeout'}")
                time.sleep(0.2)

            def run_client(chunk: list[str], sink: list[float]) -> None:
                with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
                    for p in chunk:
                        t = time.perf_counter()
                        r = client.get(f"/persons/{p}/persona")
                        sink.append(time.perf_counter() - t)
                        if r.status_code != 200:
                            raise SystemExit(f"GET /persons/{p}/persona -> {r.status_code}: {r.text[:200]}")

            run_client(ids[:100], [])  # warm-up
            took = []
            start = time.perf_counter()
            run_client(ids, took)
            summary("http", took, time.perf_counter() - start)

            sinks: list[list[float]] = [[] for _ in range(args.clients)]
            threads = [threading.Thread(target=run_client, args=(ids[i :: args.clients], sinks[i])) for i in range(args.clients)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            summary(f"http x{args.clients}", [s for sink in sinks for s in sink], time.perf_counter() - start)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"\nmachine: {os.cpu_count()} CPUs; the load generator shares them with the server.")


if __name__ == "__main__":
    main()
