"""A server a team can share: off loopback only with a bearer token; every endpoint for data,
/tiles included, answers 401 without it (in a real `geoloc serve` process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from geoloc.cli import main
from geoloc.errors import GeolocError
from geoloc.serve.auth import ENV, authorised, read_token

TOKEN = "s3cret-token-for-the-team-0123456789"


def test_the_token_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    file = tmp_path / "token.txt"
    file.write_text(TOKEN + "\n")
    assert read_token(file, {}) == TOKEN and read_token(None, {ENV: TOKEN}) == TOKEN
    assert read_token(file, {ENV: "another-token-0123456789"}) == TOKEN  # the file, when given
    assert read_token(None, {}) is None
    file.write_text("short")
    with pytest.raises(GeolocError, match="token.txt: the token must be at least 16 characters"):
        read_token(file, {})
    with pytest.raises(GeolocError, match="cannot read the token"):
        read_token(tmp_path / "absent.txt", {})
    assert authorised(f"Bearer {TOKEN}", TOKEN) and authorised(f"bearer {TOKEN}", TOKEN)
    for header in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"):
        assert not authorised(header, TOKEN), header


def test_off_loopback_without_a_token_the_server_refuses_to_start(monkeypatch, capsys) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert main(["serve", "no_such_index", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "reaches other machines" in err and ENV in err and "--token-file" in err


def _call(url: str, token: str | None, body: dict | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_every_endpoint_for_data_needs_the_token(served_index, unused_port: int, tmp_path: Path) -> None:
    token_file = tmp_path / "token.txt"
    token_file.write_text(TOKEN)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(ENV, None)
    index = str(served_index.stored.path)
    command = [sys.executable, "-m", "geoloc.cli", "serve", index, "--port", str(unused_port),
               "--token-file", str(token_file), "--device", "cpu"]  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{unused_port}"
    key = served_index.stored.tiles.key[0]
    endpoints = [
        ("/health", None),
        ("/search", {"text": "a pond", "k": 2}),
        ("/heatmap", {"text": "a pond", "cells": 4}),
        ("/explain", {"text": "a pond", "top": 1, "max_new_tokens": 1}),
        ("/tiles/" + urllib.parse.quote(key), None),
    ]
    try:
        deadline = time.monotonic() + 120
        while _ping(base) is None:
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "geoloc serve did not start"
            time.sleep(0.3)
        for path, body in endpoints:
            for token in (None, "wrong-token-0123456789", TOKEN[:-1]):
                status, answer = _call(base + path, token, body)
                assert status == 401, (path, token)
                assert key.encode() not in answer and b"tiny-smolvlm" not in answer  # reveals nothing
            status, answer = _call(base + path, TOKEN, body)
            assert status == 200, (path, answer[:200])
        assert key.encode() in _call(base + "/search", TOKEN, {"text": "a pond", "k": 40})[1]
        # The page and the API's description stay open; the description names the scheme, no key.
        assert _call(base + "/", None)[0] == 200 and _call(base + "/static/app.js", None)[0] == 200
        status, schema = _call(base + "/openapi.json", None)
        schema = json.loads(schema)
        assert status == 200 and schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert "401" in schema["paths"]["/search"]["post"]["responses"] and key not in json.dumps(schema)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _ping(base: str) -> int | None:
    try:
        with urllib.request.urlopen(base + "/", timeout=2) as response:
            return response.status
    except OSError:
        return None
