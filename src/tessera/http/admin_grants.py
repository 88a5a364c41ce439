"""Admin API routes of the authorization code grant: the consents people gave to clients.

``GET /admin/grants`` lists them (by person or client); ``DELETE /admin/grants/{grant_id}`` revokes one
— its refresh tokens, and the access tokens issued with them, are revoked in the same transaction, and
the revocation is in the audit chain (``grant.revoked``, ``token.revoked``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query
from starlette.concurrency import run_in_threadpool

from tessera.store.sql.authcode import list_grants, revoke_grant_now
from tessera.store.sql.store import SqlStore

__all__ = ["add_grant_routes"]


def add_grant_routes(
    app: FastAPI,
    store: SqlStore,
    admin: Callable[..., str],
    invalidate_status_lists: Callable[[Iterable[int | None] | None], None],
) -> None:
    @app.get("/grants", summary="List consent grants (authorization code flow)", tags=["grants"])
    def grants(
        _: str = Depends(admin),
        person: str | None = Query(None, max_length=64),
        client: str | None = Query(None, max_length=256),
    ) -> list[dict[str, Any]]:
        return [g.view() for g in store.read(lambda c: list_grants(c, person, client))]

    @app.delete("/grants/{grant_id}", summary="Revoke a consent grant and what it issued", tags=["grants"])
    async def revoke(grant_id: str, actor: str = Depends(admin)) -> dict[str, Any]:
        revoked = await run_in_threadpool(revoke_grant_now, store, grant_id[:64], actor)
        if revoked is None:
            raise HTTPException(404, "no such grant")
        invalidate_status_lists(t.status_list for t in revoked)
        return {"grant_id": grant_id, "revoked_tokens": len(revoked)}
