"""Admin API routes of the incident responses (tessera.incidents, docs/alerts.md): context alerts and
the operator's answers to them, and the quarantine of a trusted issuer with its lift approval."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import Body, Depends, FastAPI, HTTPException, Query
from starlette.concurrency import run_in_threadpool

from tessera.incidents import AlertError, Incidents

__all__ = ["add_incident_routes"]


def add_incident_routes(
    app: FastAPI,
    incidents: Incidents,
    admin: Callable[..., str],
    issuer_exists: Callable[[str], bool],
    issuers_changed: Callable[[], Awaitable[None]] | None = None,
) -> None:
    @app.get("/alerts", summary="Context alerts, newest first", tags=["alerts"])
    async def list_alerts(
        _: str = Depends(admin),
        status: Literal["open", "acknowledged", "suspended", "resumed", "revoked"] | None = None,
        limit: int = Query(100, ge=1, le=1000),
    ) -> list[dict[str, Any]]:
        return await run_in_threadpool(incidents.list_alerts, status, limit)

    @app.get("/alerts/{alert_id}", summary="Read an alert with its history of answers", tags=["alerts"])
    async def read_alert(alert_id: str, _: str = Depends(admin)) -> dict[str, Any]:
        try:
            return await run_in_threadpool(incidents.get_alert, alert_id)
        except AlertError as e:
            raise HTTPException(404, str(e)) from None

    @app.post(
        "/alerts/{alert_id}/respond",
        summary="The operator's answer: acknowledge, suspend, resume or revoke (applied at once, audited)",
        tags=["alerts"],
    )
    async def respond(alert_id: str, body: dict[str, Any] = Body(...), actor: str = Depends(admin)) -> dict[str, Any]:
        choice = body.get("response")
        if choice not in ("acknowledge", "suspend", "resume", "revoke"):
            raise HTTPException(400, "response: acknowledge, suspend, resume or revoke")
        try:
            await run_in_threadpool(incidents.get_alert, alert_id)
        except AlertError as e:
            raise HTTPException(404, str(e)) from None
        try:
            return await run_in_threadpool(incidents.respond, alert_id, choice, actor)
        except AlertError as e:
            raise HTTPException(409, str(e)) from None

    @app.get("/issuers/{name}/quarantine", summary="Is this trusted issuer quarantined?", tags=["issuers"])
    async def read_issuer_quarantine(name: str, _: str = Depends(admin)) -> dict[str, Any]:
        marker = await run_in_threadpool(incidents.issuer_quarantine, name)
        if marker is None:
            raise HTTPException(404, f"the trusted issuer {name} is not quarantined")
        return marker

    @app.post(
        "/issuers/{name}/quarantine",
        summary="Quarantine a trusted issuer: its tokens are refused until an approval lifts it",
        tags=["issuers"],
    )
    async def quarantine_issuer(
        name: str, body: dict[str, Any] = Body(default={}), actor: str = Depends(admin)
    ) -> dict[str, Any]:
        if not issuer_exists(name):
            raise HTTPException(404, "no such trusted issuer")
        reason = str(body.get("reason", ""))[:500]
        marker = await run_in_threadpool(incidents.quarantine_issuer, name, reason, actor)
        if issuers_changed is not None:
            await issuers_changed()
        return marker

    @app.post(
        "/issuers/{name}/quarantine/lift",
        summary="Ask for the approval that lifts an issuer's quarantine (people or groups, quorum, assurance)",
        tags=["issuers"],
    )
    async def lift_issuer_quarantine(
        name: str, body: dict[str, Any] = Body(...), actor: str = Depends(admin)
    ) -> dict[str, Any]:
        try:
            return await run_in_threadpool(incidents.request_issuer_lift, name, body, actor)
        except AlertError as e:
            raise HTTPException(404, str(e)) from None
