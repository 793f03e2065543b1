import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from geoloc.cli import build_parser, main
from geoloc.serve.auth import ENV


def test_serve_binds_loopback_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(["serve", "some_index"])
    assert args.host == "127.0.0.1" and args.port == 8000
    # Without a token, `geoloc serve` refuses a host other machines reach before it opens the index;
    # on loopback it goes on, and here fails on the missing index instead.
    monkeypatch.delenv(ENV, raising=False)
    missing = str(tmp_path / "no_index")
    for host in ["127.0.0.1", "::1", "localhost", "0.0.0.0", "192.168.1.4", "example.org"]:
        assert main(["serve", missing, "--host", host]) == 2
        refused = "reaches other machines" in capsys.readouterr().err
        assert refused == (host not in {"127.0.0.1", "::1", "localhost"}), host


def test_geoloc_serve_answers_over_http(served_index, unused_port: int) -> None:
    port = unused_port
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "geoloc.cli",
        "serve",
        str(served_index.stored.path),
        "--port",
        str(port),
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    health = json.load(response)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "geoloc serve did not start"
                time.sleep(0.3)
        assert health["tiles"] == 40
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/search",
            data=json.dumps({"text": "a blue building", "k": 3}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            results = json.load(response)["results"]
        assert [r["key"] for r in results] == [h.key for h in served_index.search("a blue building", k=3)]
    finally:
        server.terminate()
        server.wait(timeout=30)
