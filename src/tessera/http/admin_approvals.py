"""Admin API routes of the approval side: people, approval requests, the outbox.

No response carries a secret: enrolment and approval links go only to the person's channels, message
bodies stay sealed in the outbox, TOTP seeds never leave the store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from tessera.approvals.errors import ApprovalError, NotFound
from tessera.approvals.records import AuthenticatorRecord, PersonRecord
from tessera.approvals.service import ApprovalService
from tessera.store.sql.outbox import SqlOutbox

__all__ = ["add_approval_routes", "person_view"]


def person_view(rec: PersonRecord, auths: list[AuthenticatorRecord]) -> dict[str, Any]:
    profile = rec.person.to_json()
    # A user code is short and chosen by a person: even its hash is not shown.
    profile["has_user_code"] = profile.pop("user_code_sha256", None) is not None
    return {
        **profile,
        "source": rec.source,
        "failures": rec.failures,
        "locked": rec.locked_at is not None,
        "authenticators": [a.view() for a in auths],
        "created_at": rec.created_at,
        "updated_at": rec.updated_at,
    }


def add_approval_routes(
    app: FastAPI,
    service: ApprovalService,
    outbox: SqlOutbox,
    admin: Callable[..., str],
    clients: Callable[[str], Any],
    set_quarantine: Callable[[str, dict[str, Any], str, str], dict[str, Any]],
) -> None:
    @app.exception_handler(ApprovalError)
    async def _approval(_: Request, exc: ApprovalError) -> JSONResponse:
        return JSONResponse({"error": exc.code, "error_description": exc.description}, exc.status)

    # -- people ----------------------------------------------------------------------------------------
    @app.get("/people", summary="List people (approvers) with their authenticators and lock state", tags=["people"])
    def list_people(_: str = Depends(admin)) -> list[dict[str, Any]]:
        return [person_view(p, a) for p, a in service.list_people()]

    @app.get("/people/{person_id}", summary="Read a person", tags=["people"])
    def read_person(person_id: str, _: str = Depends(admin)) -> dict[str, Any]:
        return person_view(*service.get_person(person_id))

    @app.put("/people/{person_id}", summary="Create or replace a person", tags=["people"])
    def put_person(
        person_id: str, response: Response, body: dict[str, Any] = Body(...), actor: str = Depends(admin)
    ) -> dict[str, Any]:
        _, created = service.put_person(body, person_id, actor)
        response.status_code = 201 if created else 200
        return person_view(*service.get_person(person_id))

    @app.delete(
        "/people/{person_id}", status_code=204, summary="Delete a person and their authenticators", tags=["people"]
    )
    def delete_person(person_id: str, actor: str = Depends(admin)) -> Response:
        service.delete_person(person_id, actor)
        return Response(status_code=204)

    @app.post(
        "/people/{person_id}/enrolment",
        status_code=202,
        summary="Send the person a one-time enrolment link on their channels (never returned here)",
        tags=["people"],
    )
    def enrol(person_id: str, actor: str = Depends(admin)) -> dict[str, Any]:
        return service.start_enrolment(person_id, actor)

    @app.post("/people/{person_id}/unlock", summary="Reset a locked person's failure count", tags=["people"])
    def unlock(person_id: str, actor: str = Depends(admin)) -> dict[str, Any]:
        service.unlock_person(person_id, actor)
        return person_view(*service.get_person(person_id))

    @app.delete(
        "/people/{person_id}/authenticators/{authenticator_id}",
        status_code=204,
        summary="Remove an authenticator (the person is notified on their channels)",
        tags=["people"],
    )
    def remove_authenticator(person_id: str, authenticator_id: str, actor: str = Depends(admin)) -> Response:
        service.remove_authenticator(person_id, authenticator_id, actor)
        return Response(status_code=204)

    # -- approval requests ---------------------------------------------------------------------------------
    @app.post(
        "/approvals",
        status_code=201,
        summary="Open an approval request: the eligible people get one-time links on their channels",
        tags=["approvals"],
    )
    def create_approval(body: dict[str, Any] = Body(...), actor: str = Depends(admin)) -> dict[str, Any]:
        return service.create_request(body, actor, origin="admin")

    @app.get("/approvals", summary="List approval requests, newest first", tags=["approvals"])
    def list_approvals(
        _: str = Depends(admin),
        status: Literal["pending", "approved", "denied", "expired", "cancelled"] | None = None,
        limit: int = Query(100, ge=1, le=1000),
    ) -> list[dict[str, Any]]:
        return service.list_requests(status, limit)

    @app.get("/approvals/{request_id}", summary="Read an approval request and its votes", tags=["approvals"])
    def read_approval(request_id: str, _: str = Depends(admin)) -> dict[str, Any]:
        return service.get_request(request_id)

    @app.post("/approvals/{request_id}/cancel", summary="Cancel a pending request", tags=["approvals"])
    def cancel_approval(request_id: str, actor: str = Depends(admin)) -> dict[str, Any]:
        return service.cancel(request_id, actor)

    @app.post(
        "/approvals/{request_id}/resend",
        summary="New links to the people who have not voted (old links stop working; failure counts stay)",
        tags=["approvals"],
    )
    def resend_approval(request_id: str, actor: str = Depends(admin)) -> dict[str, Any]:
        return service.resend(request_id, actor)

    # -- incident quarantine of a client ------------------------------------------------------------------
    @app.post(
        "/clients/{client_id}/quarantine",
        summary="Quarantine a client: no new token until an approval revalidates its ownership and scope",
        tags=["clients"],
    )
    def quarantine(
        client_id: str, body: dict[str, Any] = Body(default={}), actor: str = Depends(admin)
    ) -> dict[str, Any]:
        reason = str(body.get("reason", ""))[:300]
        return set_quarantine(client_id, {"since": int(service.now()), "reason": reason}, actor, "client.quarantined")

    @app.post(
        "/clients/{client_id}/quarantine/lift",
        summary="Ask for the approval that lifts a quarantine (people or groups, quorum, assurance)",
        tags=["clients"],
    )
    def lift_quarantine(
        client_id: str, body: dict[str, Any] = Body(...), actor: str = Depends(admin)
    ) -> dict[str, Any]:
        client = clients(client_id)
        marker = client.metadata.get("quarantined")
        if not marker:
            raise NotFound(f"client {client_id} is not quarantined")
        request = {
            "requester": actor,
            "action": "lift the quarantine of a client (ownership and scope revalidated)",
            "resource": client_id,
            "scope": str(client.metadata.get("scope", "")).split(),
            "approvers": body.get("approvers", []),
            "groups": body.get("groups", []),
            "quorum": body.get("quorum", 1),
            "assurance": body.get("assurance", "aal2"),
            "ttl": body.get("ttl", 3600),
            "environment": {
                "contacts": ", ".join(client.metadata.get("contacts", []))[:500],
                "reason": str(marker.get("reason", "") if isinstance(marker, dict) else "")[:300],
            },
        }
        view = service.create_request(request, actor, origin=f"quarantine:{client_id}")
        set_quarantine(
            client_id,
            {**(marker if isinstance(marker, dict) else {}), "lift": view["request_id"]},
            actor,
            "client.quarantine_lift_requested",
        )
        return view

    # -- the outbox ----------------------------------------------------------------------------------------
    @app.get("/outbox", summary="Outgoing messages (metadata only; bodies stay sealed)", tags=["outbox"])
    async def list_outbox(
        _: str = Depends(admin),
        status: Literal["pending", "delivered", "dead"] | None = None,
        ref: str | None = None,
        limit: int = Query(100, ge=1, le=1000),
    ) -> dict[str, Any]:
        messages = await run_in_threadpool(lambda: outbox.list_messages(status=status, ref=ref, limit=limit))
        return {"counts": await run_in_threadpool(outbox.counts), "messages": messages}

    @app.post("/outbox/{message_id}/retry", summary="Send a dead-lettered message again", tags=["outbox"])
    async def retry_message(message_id: str, actor: str = Depends(admin)) -> dict[str, Any]:
        if not await run_in_threadpool(outbox.requeue, message_id, actor):
            raise NotFound(f"no dead-lettered message {message_id}")
        service.on_enqueue()
        return {"message_id": message_id, "status": "pending"}
