"""`geoloc serve` under fault: hostile or broken clients never stop it answering the others.

One real server process (uvicorn, as users start it) serves a 40-tile index. Each test runs a fault
in threads while well-behaved clients search; every good answer must equal the index's own
ranking, and /health must be fine afterwards. Every socket and request has a timeout, so a server
that hangs fails the test instead of hanging it.

The server has no reload mechanism: it holds the index it opened in memory. What it must survive is
the index folder being rewritten on disk (`geoloc index remove`, an atomic folder swap) while it
serves; that is tested below.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from ports import free_port

QUERIES = ["a red building by a pond", "a blue roof near the park", "grey towers along a river"]
K = 5
TIMEOUT = 30.0  # any one request; a server that stops answering fails well within the test timeout
BODY_LIMIT = 16 * 1024


@pytest.fixture(scope="module")
def index(tiny_city: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from geoloc.index.build import build_index

    out = tmp_path_factory.mktemp("faults") / "index"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build_index("tiny-smolvlm", tiny_city, out)
    finally:
        torch.set_num_threads(before)
    return out


@pytest.fixture(scope="module")
def expected(index: Path) -> dict[str, list[str]]:
    """The index's own top-K keys for each query: what every good client must get."""
    from geoloc.index.search import SearchIndex

    opened = SearchIndex.open(index)
    return {q: [hit.key for hit in opened.search(q, k=K)] for q in QUERIES}


@pytest.fixture(scope="module")
def server(index: Path, expected: dict[str, list[str]]) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "geoloc", "serve", str(index), "--port", str(port)]
    command += ["--max-body-bytes", str(BODY_LIMIT)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None:
                pytest.fail(f"geoloc serve exited: {process.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("geoloc serve did not start within 120 s")
            time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


def _good_clients(
    base: str, expected: dict[str, list[str]], rounds: int, errors: list[str]
) -> tuple[list[int], list[threading.Thread]]:
    """Three clients search each query `rounds` times; wrong answers go to `errors`.

    Returns ([correct answers so far], the running client threads).
    """
    held = [0]

    def client() -> None:
        with httpx.Client(base_url=base, timeout=TIMEOUT) as http:
            for _ in range(rounds):
                for query in QUERIES:
                    try:
                        response = http.post("/search", json={"text": query, "k": K})
                        keys = [row["key"] for row in response.json()["results"]]
                    except (httpx.HTTPError, ValueError, KeyError) as error:
                        errors.append(f"{query}: {error!r}")
                        continue
                    if response.status_code != 200 or keys != expected[query]:
                        errors.append(f"{query}: {response.status_code} {keys}")
                    else:
                        held[0] += 1

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    return held, threads


def _under_fault(base: str, expected: dict[str, list[str]], fault: Callable[[], None]) -> int:
    """Run `fault` while three good clients search; return how many correct answers they got."""
    errors: list[str] = []
    held, threads = _good_clients(base, expected, rounds=3, errors=errors)
    fault()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a good client hung"
    assert not errors, errors[:5]
    assert held[0] == 3 * 3 * len(QUERIES)
    health = httpx.get(f"{base}/health", timeout=TIMEOUT).json()
    assert health["status"] == "ok" and health["tiles"] >= 1
    return held[0]


def _connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    sock.settimeout(TIMEOUT)
    return sock


def _head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _status(sock: socket.socket) -> int:
    """The status code of the response on `sock` (0: the server closed without one)."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return 0
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_clients_that_disconnect_mid_request(server: str, expected: dict[str, list[str]]) -> None:
    body = json.dumps({"text": "a red building by a pond", "k": 50}).encode()

    def fault() -> None:
        for n in range(30):
            with _connect(server) as sock:
                if n % 3 == 0:  # gone halfway through the body
                    sock.sendall(_head("/search", len(body)) + body[: len(body) // 2])
                elif n % 3 == 1:  # gone halfway through the headers
                    sock.sendall(_head("/search", len(body))[:30])
                else:  # a whole request, gone before the answer
                    sock.sendall(_head("/search", len(body)) + body)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    assert _under_fault(server, expected, fault) == 27


def test_a_burst_of_oversized_bodies_is_refused(server: str, expected: dict[str, list[str]]) -> None:
    statuses: list[int] = []

    def fault() -> None:
        big = b'{"text": "' + b"x" * (1 << 20) + b'"}'  # 1 MiB, 64 x the limit
        with httpx.Client(base_url=server, timeout=TIMEOUT) as http:
            for _ in range(40):
                try:
                    statuses.append(
                        http.post(
                            "/search", content=big, headers={"Content-Type": "application/json"}
                        ).status_code
                    )
                except httpx.HTTPError:  # the server may close the connection once it has said 413
                    statuses.append(0)

        # A body that does not declare its length (chunked) is cut at the limit too.
        def chunks() -> Iterator[bytes]:
            for _ in range(64):
                yield b"x" * 1024

        response = httpx.post(f"{server}/search", content=chunks(), timeout=TIMEOUT)
        statuses.append(response.status_code)

    _under_fault(server, expected, fault)
    assert statuses.count(413) == 41, statuses


def test_a_slow_client_does_not_hold_up_the_others(server: str, expected: dict[str, list[str]]) -> None:
    body = json.dumps({"text": QUERIES[0], "k": K}).encode()
    answers: list[int] = []

    def fault() -> None:
        with _connect(server) as slow, _connect(server) as stalled:
            stalled.sendall(_head("/search", len(body)) + body[:5])  # never finishes its body
            slow.sendall(_head("/search", len(body)))
            for i in range(0, len(body), 4):  # 4 bytes every 50 ms: about 0.6 s for the body
                slow.sendall(body[i : i + 4])
                time.sleep(0.05)
            answers.append(_status(slow))

    held = _under_fault(server, expected, fault)
    assert held == 27 and answers == [200]


def test_the_index_rewritten_on_disk_while_serving(
    server: str, index: Path, expected: dict[str, list[str]]
) -> None:
    """`geoloc index remove` swaps a new folder in: the server keeps answering from what it opened."""
    from geoloc.index.build import remove_from_index
    from geoloc.index.store import read_index

    def fault() -> None:
        keys = read_index(index).tiles.key
        for key in keys[:5]:
            assert remove_from_index(index, [key]) == 1

    _under_fault(server, expected, fault)
    assert len(read_index(index).tiles.key) == 35  # the disk changed; the served answers did not
