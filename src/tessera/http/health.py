"""``/healthz`` (liveness) and ``/readyz`` (readiness), and the database counts read at scrape time.

``/healthz`` answers 200 while the process serves HTTP: a failing liveness probe means "restart me",
so it depends on nothing else. ``/readyz`` answers 200 only when this process can do its work:

- ``database``: a ``SELECT 1`` on the read connection pool answers within ``readyz_timeout``
  seconds (on SQLite the database file must also still exist);
- ``migrations``: the schema revision in the database is the head revision this code was built for
  (read in the same round trip);
- ``keys``: an active signing key is loaded for every algorithm in ``signing_algs``, and none is
  older than ``readyz_key_max_age`` (when set): the rotation deadline.

Otherwise 503, with a JSON body naming each check, whether it passed and why not; a load balancer
stops sending traffic until the check passes again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response

from tessera.oauth.keys import KeyState
from tessera.settings import Settings
from tessera.store.sql.engine import head_revision
from tessera.store.sql.store import SqlStore
from tessera.store.sql.tables import approval_requests, ciba_requests, outbox

from .responses import NO_STORE, json_response

__all__ = ["database_counts", "healthz", "readyz_endpoint"]


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"}, 200, NO_STORE)


def _sqlite_file(url: str) -> Path | None:
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[1] if "///" in url else ""
    return Path(path) if path and path != ":memory:" else None


def readyz_endpoint(
    settings: Settings, store: SqlStore, keys: Callable[[], tuple[Any, list[Any]]], now: Callable[[], float]
) -> Callable[[Request], Awaitable[Response]]:
    head = head_revision()
    sqlite_file = _sqlite_file(store.url)

    def probe() -> str | None:
        if sqlite_file is not None and not sqlite_file.exists():
            raise FileNotFoundError(f"the SQLite database file {sqlite_file} is gone")
        with store.read_engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1").scalar()
            # What alembic's MigrationContext reads, without its per-call log lines.
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()

    def check_keys() -> tuple[bool, str]:
        ring, records = keys()
        missing = [alg for alg in settings.signing_algs if alg not in ring.active]
        if missing:
            return False, "no active signing key for " + ", ".join(missing)
        if settings.readyz_key_max_age:
            t = now()
            for rec in records:
                if rec.state is KeyState.ACTIVE:
                    age = t - (rec.activated_at or rec.created_at)
                    if age > settings.readyz_key_max_age:
                        return (
                            False,
                            f"the active {rec.alg} key {rec.kid} is past its rotation deadline ({int(age)} s old)",
                        )
        return True, "active keys loaded: " + ", ".join(sorted(ring.active))

    async def readyz(request: Request) -> Response:
        checks: dict[str, dict[str, Any]] = {}
        started = time.perf_counter()
        try:
            revision = await asyncio.wait_for(asyncio.to_thread(probe), settings.readyz_timeout)
            checks["database"] = {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}
            at_head = revision == head
            checks["migrations"] = {
                "ok": at_head,
                "detail": f"at {revision}" if at_head else f"database at {revision}, code expects {head}",
            }
        except TimeoutError:
            checks["database"] = {"ok": False, "detail": f"no answer within {settings.readyz_timeout} s"}
            checks["migrations"] = {"ok": False, "detail": "unknown: the database did not answer"}
        except Exception as e:
            checks["database"] = {"ok": False, "detail": f"{type(e).__name__}: {str(e)[:200]}"}
            checks["migrations"] = {"ok": False, "detail": "unknown: the database did not answer"}
        ok, detail = check_keys()
        checks["keys"] = {"ok": ok, "detail": detail}
        failing = [name for name, c in checks.items() if not c["ok"]]
        body = {"status": "ready" if not failing else "unready", "failing": failing, "checks": checks}
        return json_response(body, 503 if failing else 200, NO_STORE)

    return readyz


def database_counts(store: SqlStore, now_ms: Callable[[], int]) -> dict[str, float]:
    """The gauges read from the database at scrape time (indexed counts, one connection)."""
    with store.read_engine.connect() as conn:
        by_status: dict[str, int] = dict(
            conn.execute(sa.select(outbox.c.status, sa.func.count()).group_by(outbox.c.status)).all()
        )
        approvals = conn.execute(
            sa.select(sa.func.count()).select_from(approval_requests).where(approval_requests.c.status == "pending")
        ).scalar_one()
        ciba = conn.execute(
            sa.select(sa.func.count())
            .select_from(ciba_requests)
            .where(ciba_requests.c.status == "pending", ciba_requests.c.expires_at > now_ms() // 1000)
        ).scalar_one()
    return {
        "tessera_outbox_pending": float(by_status.get("pending", 0)),
        "tessera_outbox_dead_letters": float(by_status.get("dead", 0)),
        "tessera_approvals_pending": float(approvals),
        "tessera_ciba_pending": float(ciba),
    }
