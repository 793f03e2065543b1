"""An index of the 40-tile city (tiny-smolvlm), a test client, and a live server, once per session.

Torch runs on one thread here: on this shared 2-core machine, two threads spin against other
processes and a tiny forward pass takes ten times longer.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ports import free_port
from torch_threads import one_thread, one_torch_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="session")
def served_index(tiny_city: Path, tmp_path_factory: pytest.TempPathFactory):
    from geoloc.index.build import build_index
    from geoloc.index.search import SearchIndex

    out = tmp_path_factory.mktemp("served") / "index"
    with one_thread():
        build_index("tiny-smolvlm", tiny_city, out)
        return SearchIndex.open(out)


@pytest.fixture(scope="session")
def client(served_index):
    from fastapi.testclient import TestClient

    from geoloc.serve.app import create_app

    with TestClient(create_app(served_index)) as test_client:
        yield test_client


@pytest.fixture
def unused_port() -> int:
    return free_port()


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """`app` served by uvicorn on loopback, in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def serve_app():  # noqa: ANN201
    """`serve_app(app)`: serve an app of the test's own on loopback (a context manager that
    yields its URL); a fixture, since test modules cannot import a conftest by name."""
    return serve_in_thread


@pytest.fixture(scope="session")
def live_server(served_index) -> Iterator[str]:
    """The app served by uvicorn on loopback, in a thread; yields its base URL."""
    from geoloc.serve.app import create_app

    with serve_in_thread(create_app(served_index)) as url:
        yield url
