"""Load test of `geoloc serve`: concurrent clients on loopback, bounded in count and in time.

    .venv/bin/python benchmarks/serve_load.py                      # 50 clients, 10,000 searches, <= 180 s
    .venv/bin/python benchmarks/serve_load.py --requests 2000 --clients 20
    .venv/bin/python benchmarks/serve_load.py --index my_index     # an existing index

Without --index, a synthetic city (--tiles) is indexed with tiny-smolvlm in a temporary folder.
The server runs as its own process (`python -m geoloc.cli serve`), so client and server do not
share an interpreter. Each client sends POST /search with a varied description, one request at a
time, until the request count or the time limit is reached. Reported:

- latency p50 / p90 / p99 / max (ms), measured by the client, request sent to response read;
- throughput (searches answered per second);
- errors: responses other than 200, or a 200 whose body is not k results;
- lost: requests sent that got no response at all (connection reset, timeout), and the
  difference between the searches the server counted (GET /health) and the 200s received.

Exit status 1 if there was any error or lost request. Target: zero of both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

COLOURS = ["red", "blue", "white", "yellow", "black", "orange", "purple"]
SHAPES = ["square", "round", "long", "l-shaped", "rectangular"]
THINGS = ["a pond", "some trees", "a parking lot", "an open field", "a road", "a small lake"]
PLACES = ["on its left", "on its right", "to the north", "in the south", "behind it", "across the road"]


def queries(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = (COLOURS, SHAPES, THINGS, PLACES)
    return ["a {} {} building with {} {}".format(*(rng.choice(w) for w in words)) for _ in range(count)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(index: Path, port: int) -> list[str]:
    """`geoloc serve` of an index on a port, on the CPU."""
    return [sys.executable, "-m", "geoloc.cli", "serve", str(index), "--port", str(port), "--device", "cpu"]


def build_demo_index(folder: Path, tiles: int) -> Path:
    import torch

    from geoloc.data.synth import generate_city
    from geoloc.index.build import build_index

    torch.set_num_threads(1)  # two threads spin against other processes on a busy 2-core machine
    manifest = generate_city(folder / "city", tiles=tiles, seed=0)
    build_index("tiny-smolvlm", manifest, folder / "index", use_cache=False)
    return folder / "index"


def wait_for_health(url: str, server: subprocess.Popen, limit_s: float = 180) -> dict:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            return httpx.get(url + "/health", timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.3)
    raise SystemExit("the server did not answer /health in time")


async def drive(url: str, texts: list[str], clients: int, k: int, max_seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lost: list[str] = []
    next_request = 0
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def one_client() -> None:
            nonlocal next_request
            while next_request < len(texts) and time.monotonic() < deadline:
                text = texts[next_request]
                next_request += 1
                start = time.perf_counter()
                try:
                    response = await client.post("/search", json={"text": text, "k": k})
                except httpx.HTTPError as error:
                    lost.append(type(error).__name__)
                    continue
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    errors.append(f"HTTP {response.status_code}")
                elif len(response.json()["results"]) != k:
                    errors.append("wrong number of results")

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - start
    return {"sent": next_request, "latencies": latencies, "errors": errors, "lost": lost, "wall_s": wall}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--index", help="an index folder (default: a synthetic city indexed with tiny-smolvlm)"
    )
    parser.add_argument("--tiles", type=int, default=1000, help="tiles of the synthetic city")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--max-seconds", type=float, default=180, help="stop sending after this long")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--server-threads", type=int, default=1, help="OMP_NUM_THREADS of the server process")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="geoloc-load-") as tmp:
        index = Path(args.index) if args.index else build_demo_index(Path(tmp), args.tiles)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "OMP_NUM_THREADS": str(args.server_threads)}
        server = subprocess.Popen(serve_command(index, port), env=env)
        try:
            health = wait_for_health(url, server)
            before = health["searches"]
            result = asyncio.run(drive(url, queries(args.requests), args.clients, args.k, args.max_seconds))
            counted = httpx.get(url + "/health", timeout=10).json()["searches"] - before
        finally:
            server.terminate()
            server.wait(timeout=30)

    latencies_ms = np.array(result["latencies"]) * 1000
    ok = len(result["latencies"]) - len(result["errors"])
    figures = {
        "index_tiles": health["tiles"],
        "clients": args.clients,
        "requests_asked": args.requests,
        "requests_sent": result["sent"],
        "ok": ok,
        "errors": len(result["errors"]),
        "lost": len(result["lost"]) + abs(counted - ok - result["errors"].count("wrong number of results")),
        "server_counted": counted,
        "wall_s": round(result["wall_s"], 2),
        "throughput_per_s": round(len(latencies_ms) / result["wall_s"], 1),
        "p50_ms": round(float(np.percentile(latencies_ms, 50)), 1),
        "p90_ms": round(float(np.percentile(latencies_ms, 90)), 1),
        "p99_ms": round(float(np.percentile(latencies_ms, 99)), 1),
        "max_ms": round(float(latencies_ms.max()), 1),
    }
    print(json.dumps(figures, indent=2))
    if result["errors"] or result["lost"]:
        print("kinds of error:", sorted(set(result["errors"] + result["lost"])))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if figures["errors"] or figures["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
