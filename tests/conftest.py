from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from support import LiveServer, Postgres

# The Chromium fixture (tests/browser_support.py), registered once: imported into several test modules,
# its definitions would be several, and a second Playwright cannot start while another one runs.
pytest_plugins = ["browser_support"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    pg = Postgres()
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One live server per test module (SQLite, embedded default)."""
    srv = LiveServer(tmp_path_factory.mktemp("srv") / "data").start()
    yield srv
    srv.stop()
    r = srv.cli("audit", "verify")
    assert r.returncode == 0, "audit chain broken after the module's tests: " + r.stdout + r.stderr


@pytest.fixture
def fresh_server(tmp_path: pathlib.Path) -> Iterator[LiveServer]:
    """A live server of the test's own, for tests that change global state (keys, restarts)."""
    srv = LiveServer(tmp_path / "data").start()
    yield srv
    srv.stop()
    r = srv.cli("audit", "verify")
    assert r.returncode == 0, "audit chain broken after the test: " + r.stdout + r.stderr
