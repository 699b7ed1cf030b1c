from __future__ import annotations

import httpx
import pytest

from tests.support import Server, start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    """One live registry (filesystem storage) for the HTTP tests; tests use their own repository names."""
    base = tmp_path_factory.mktemp("registry")
    srv = start_server(str(base / "data"), str(base / "server.log"))
    yield srv
    srv.stop()


@pytest.fixture
def client(server: Server) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c
