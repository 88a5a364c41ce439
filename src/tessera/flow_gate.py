"""The flows at the token endpoint (``oauth.policy.IssuancePolicy``): evaluate, resolve hooks and
approvals, write the decision to the audit chain, answer with limits or the protocol error.

A decision is recorded (``flow.decision``: flows and versions, redacted inputs, outcome, reasons,
trace) before a token is signed; if the record cannot be written, the answer is a denial. An
``approve`` step opens an approval request (docs/approvals.md) keyed by a fingerprint of the request
(client, grant, subject, scope, audience) and the flow version: the client retries the same request
and gets ``authorization_pending`` until the people decide; the approval then covers one issuance.
A pending request finishes on the flow version it started on, even if a newer one was published.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import httpx
import sqlalchemy as sa

from tessera.approvals.errors import ApprovalError
from tessera.approvals.service import ApprovalService
from tessera.audit import AuditEvent
from tessera.incidents import ContextWatch, Incidents, attributes_digest, network_of
from tessera.oauth.errors import (
    AccessDenied,
    AuthorizationPending,
    InvalidClientMetadata,
    InvalidGrant,
    UnauthorizedClient,
)
from tessera.oauth.policy import IssuanceContext, PolicyLimits
from tessera.store.sql.store import SqlStore
from tessera.store.sql.tables import approval_requests
from tessera.workflows.engine import Decision, HookCall, Recorded, evaluate
from tessera.workflows.model import Flow

__all__ = ["FlowGate", "redact"]

log = logging.getLogger("tessera.flows")
_SECRET_KEY = re.compile(r"secret|token|password|assertion|private|credential", re.I)
_DENY = {"client_credentials": UnauthorizedClient, "token_exchange": InvalidGrant, "jwt_bearer": InvalidGrant}


def _client_context(client_id: str, md: Mapping[str, Any], with_metadata: bool = True) -> dict[str, Any]:
    return {
        "id": client_id,
        "name": md.get("client_name", ""),
        "contacts": list(md.get("contacts", [])),
        "grant_types": list(md.get("grant_types", [])),
        "scope": str(md.get("scope", "")).split(),
        "metadata": redact(dict(md)) if with_metadata else {},
        "quarantined": bool(md.get("quarantined", False)),
    }


def redact(value: Any, depth: int = 0) -> Any:
    """Inputs as the decision log keeps them: values under secret-looking keys replaced, sizes capped."""
    if depth > 8:
        return "…"
    if isinstance(value, dict):
        return {k: "[redacted]" if _SECRET_KEY.search(str(k)) else redact(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, depth + 1) for v in value[:50]]
    if isinstance(value, str) and len(value) > 512:
        return value[:512] + "…"
    return value


class FlowGate:
    def __init__(
        self,
        *,
        store: SqlStore,
        approvals: ApprovalService,
        now: Callable[[], float],
        hooks: httpx.AsyncClient,
        flow_by_version: Callable[[str], Flow | None],
        incidents: Incidents | None = None,
        watch: ContextWatch | None = None,
    ) -> None:
        self._incidents = incidents
        self._watch = watch
        self._watching = False
        self._store = store
        self._approvals = approvals
        self._now = now
        self._hooks = hooks
        self._by_version = flow_by_version
        self._flows: list[Flow] = []
        self._grants: set[str] = set()
        self._approving = self._open = self._metadata = True
        #: Told (trigger, outcome) of every decision recorded (the server's metrics).
        self.on_decision: Callable[[str, str], None] = lambda trigger, outcome: None

    @property
    def flows(self) -> list[Flow]:
        return self._flows

    def _open_flow_approvals(self) -> bool:
        try:
            return bool(
                self._store.read(
                    lambda c: c.execute(
                        sa.select(approval_requests.c.request_id)
                        .where(approval_requests.c.origin.like("flow:%"), approval_requests.c.status == "pending")
                        .limit(1)
                    ).first()
                )
            )
        except Exception:  # no store to ask: assume there may be
            return True

    def replace(self, flows: Sequence[Flow]) -> None:
        self._flows = list(flows)
        # Work done per request only when a flow can need it: the approvals lookup (a database read)
        # when some flow has an approve step or an approval a flow opened is still open; the client's
        # full metadata when some flow reads client.metadata.
        self._approving = any(step.kind == "approve" for f in flows for step in f.steps)
        self._open = self._open_flow_approvals()
        self._metadata = any("client.metadata" in json.dumps(dict(f.document)) for f in flows)
        # The request's context (source network, federated attributes, hour) is watched per client only
        # when a flow reads what is new about it.
        self._watching = self._watch is not None and any("source.new" in json.dumps(dict(f.document)) for f in flows)
        issue = [f for f in flows if f.on == "token.issue"]
        every = ("client_credentials", "token_exchange", "jwt_bearer", "ciba", "authorization_code", "refresh_token")
        self._grants = {g for g in every for f in issue if f.applies_to_grant(g)}

    def applies(self, grant: str, client_metadata: Mapping[str, Any] | None = None) -> bool:
        return grant in self._grants or bool(
            client_metadata
            and ("onboarding" in client_metadata or "quarantined" in client_metadata or "suspended" in client_metadata)
        )

    # -- client.register -------------------------------------------------------------------------------
    async def check_registration(self, client_id: str, metadata: dict[str, Any]) -> dict[str, Any] | None:
        """Registration flows: None (allowed), an onboarding marker (approval pending), or
        ``InvalidClientMetadata`` with the reason (denied)."""
        if not any(f.on == "client.register" for f in self._flows):
            return None
        now = int(self._now())
        context = {
            "client": _client_context(client_id, metadata),
            "request": {},
            "source": {"hour": (now // 3600) % 24},
        }
        decision = evaluate(self._flows, "client.register", context, Recorded(), now)
        for _ in range(3):
            if not decision.calls:
                break
            hooks = {c.key: await self._call(c, context) for c in decision.calls}
            decision = evaluate(self._flows, "client.register", context, Recorded(hooks=hooks), now)
        ctx = IssuanceContext("register", client_id, metadata, [], [], 0, client_id)
        pending: list[str] = []
        if decision.outcome == "pending":
            for need in decision.approvals:
                body = {
                    "requester": client_id,
                    "action": f"onboard the client {metadata.get('client_name') or client_id}",
                    "resource": client_id,
                    "scope": str(metadata.get("scope", "")).split(),
                    "approvers": list(need.people),
                    "groups": list(need.groups),
                    "quorum": need.quorum,
                    "assurance": need.assurance,
                    "ttl": min(need.timeout, self._approvals.config.max_ttl),
                    "environment": {
                        "flow": need.flow,
                        "step": need.step,
                        "version": need.version,
                        "contacts": ", ".join(metadata.get("contacts", []))[:500],
                    },
                }
                try:
                    view = await asyncio.to_thread(
                        self._approvals.create_request, body, "registration", f"onboarding:{client_id}:{need.key}"
                    )
                except ApprovalError as e:
                    raise InvalidClientMetadata(
                        f"onboarding needs an approval that cannot be opened: {e.description}"
                    ) from None
                pending.append(str(view["request_id"]))
        if decision.flows or decision.outcome != "allow":
            await self._log(decision, ctx, context, pending, trigger="client.register")
        if decision.outcome == "deny":
            raise InvalidClientMetadata(f"denied by flow: {decision.reason}")
        if decision.outcome == "pending":
            return {"status": "pending", "approvals": pending}
        return None

    async def _onboarding(self, ctx: IssuanceContext) -> IssuanceContext:
        """A client registered pending an onboarding approval gets nothing until every approval is granted."""
        marker = ctx.client_metadata.get("onboarding")
        if not isinstance(marker, dict):
            return ctx
        ids = [str(x) for x in marker.get("approvals", [])]
        statuses = await asyncio.to_thread(self._statuses, ids, int(self._now()))
        if all(st == "approved" for st in statuses):
            await asyncio.to_thread(self._clear, ctx.client_id, "onboarding", "client.onboarded")
            return replace(ctx, client_metadata={k: v for k, v in ctx.client_metadata.items() if k != "onboarding"})
        if any(st in ("denied", "expired", "cancelled", "missing") for st in statuses):
            raise UnauthorizedClient("the client's onboarding was not approved", client_id=ctx.client_id)
        raise AuthorizationPending(f"the client's onboarding awaits approval ({', '.join(ids)})")

    async def _quarantine(self, ctx: IssuanceContext) -> IssuanceContext:
        """An incident quarantine blocks new issuance until an approval revalidates the client; a
        suspension (an alert's answer, docs/alerts.md) until its owners resume it."""
        suspended = ctx.client_metadata.get("suspended")
        if suspended:
            alert = suspended.get("alert", "") if isinstance(suspended, dict) else ""
            raise UnauthorizedClient(f"the client is suspended (alert {alert}); its owners can resume it")
        marker = ctx.client_metadata.get("quarantined")
        if not marker:
            return ctx
        lift = marker.get("lift") if isinstance(marker, dict) else None
        if lift:
            (status,) = await asyncio.to_thread(self._statuses, [str(lift)], int(self._now()))
            if status == "approved":
                await asyncio.to_thread(self._clear, ctx.client_id, "quarantined", "client.quarantine_lifted")
                return replace(
                    ctx, client_metadata={k: v for k, v in ctx.client_metadata.items() if k != "quarantined"}
                )
        raise UnauthorizedClient("the client is quarantined; its ownership and scope must be revalidated")

    def _statuses(self, ids: list[str], now: int) -> list[str]:
        rows = self._store.read(
            lambda c: {
                r.request_id: ("expired" if r.status == "pending" and r.expires_at <= now else r.status)
                for r in c.execute(
                    sa.select(
                        approval_requests.c.request_id, approval_requests.c.status, approval_requests.c.expires_at
                    ).where(approval_requests.c.request_id.in_(ids))
                )
            }
        )
        return [rows.get(i, "missing") for i in ids]

    def _clear(self, client_id: str, field: str, event: str) -> None:
        from tessera.store.sql import repo

        with self._store.transaction() as conn:
            client = repo.get_client(conn, client_id)
            if client is not None and field in client.metadata:
                md = {k: v for k, v in client.metadata.items() if k != field}
                repo.update_client(conn, replace(client, metadata=md))
                repo.append_audit(conn, [AuditEvent(event, actor="flows", subject=client_id)], self._store.now_ms())
        self._store.forget_client(client_id)

    # -- token.issue ---------------------------------------------------------------------------------
    async def check(self, ctx: IssuanceContext) -> PolicyLimits:
        ctx = await self._onboarding(ctx)
        ctx = await self._quarantine(ctx)
        if ctx.grant not in self._grants:
            return PolicyLimits()
        now = int(self._now())
        md = ctx.client_metadata
        context = {
            "client": _client_context(ctx.client_id, md, self._metadata),
            "request": {
                "grant": ctx.grant,
                "scope": list(ctx.scope),
                "audience": list(ctx.audience),
                "lifetime": ctx.lifetime,
                "authorization_details": list(ctx.authorization_details),
            },
            "federation": dict(ctx.federation or {}),
            "person": {"id": ctx.person} if ctx.person else {},
            "source": {
                "hour": (now // 3600) % 24,
                "ip": ctx.source_ip or "",
                "network": network_of(ctx.source_ip) or "",
            },
        }
        if self._watching and self._watch is not None:
            features = {
                "network": context["source"]["network"] or None,
                "attributes": attributes_digest(ctx.federation),
                "hour": str(context["source"]["hour"]),
            }
            context["source"]["new"] = await asyncio.to_thread(self._watch.observe, ctx.client_id, features)
        decision, pending_ids = await self._run("token.issue", ctx, context, ctx.grant)
        if decision.outcome == "deny":
            error = _DENY.get(ctx.grant, AccessDenied)
            raise error(f"denied by flow: {decision.reason}", client_id=ctx.client_id)
        if decision.outcome == "pending":
            what = ", ".join(pending_ids) or "a hook"
            raise AuthorizationPending(f"an approval is required ({what}); retry this request later")
        lim = decision.limits
        return PolicyLimits(lim.lifetime, lim.scopes, lim.audiences)

    async def _run(
        self, trigger: str, ctx: IssuanceContext, context: dict[str, Any], grant: str | None
    ) -> tuple[Decision, list[str]]:
        """Evaluate, resolve hooks, open or reuse approvals, record the decision; on allow, consume the
        approvals used and send the notices. The caller turns deny and pending into its own errors."""
        now = int(self._now())
        fingerprint = hashlib.sha256(
            "\x00".join(
                [
                    trigger,
                    ctx.client_id,
                    ctx.grant,
                    ctx.subject,
                    " ".join(sorted(ctx.scope)),
                    " ".join(sorted(ctx.audience)),
                ]
            ).encode()
        ).hexdigest()[:32]
        flows = list(self._flows)
        current = {f.id: f.version for f in flows}
        found = (
            await asyncio.to_thread(self._existing_approvals, fingerprint, now) if self._approving or self._open else {}
        )
        existing = {
            k: v
            for k, v in found.items()
            # An open or granted approval pins its flow version. A refusal stands for the version that
            # asked for it (the same request is denied, not asked again) but not for a newer one; after
            # an expiry or a cancellation the request may ask again.
            if v[1] in ("pending", "approved") or (v[1] == "denied" and current.get(k[0]) == v[0])
        }
        for (flow_id, _step), (version, _status, _rid) in existing.items():
            pinned = next((f for f in flows if f.id == flow_id), None)
            if pinned is None or pinned.version != version:
                old = await asyncio.to_thread(self._by_version, version)
                if old is not None:
                    flows = [f for f in flows if f.id != flow_id] + [old]
        recorded = Recorded(approvals={f"{fid}/{sid}": st for (fid, sid), (_v, st, _r) in existing.items()})
        decision = evaluate(flows, trigger, context, recorded, now, grant)
        for _ in range(3):
            if not decision.calls:
                break
            answers = dict(recorded.hooks)
            for call in decision.calls:
                answers[call.key] = await self._call(call, context)
            recorded = Recorded(approvals=recorded.approvals, hooks=answers)
            decision = evaluate(flows, trigger, context, recorded, now, grant)
        pending_ids: list[str] = []
        if decision.outcome == "pending":
            for need in decision.approvals:
                if (need.flow, need.step) in existing:
                    pending_ids.append(existing[(need.flow, need.step)][2])
                    continue
                pending_ids.append(await self._open_approval(need, ctx, fingerprint))
        if decision.flows or decision.outcome != "allow":
            # No flow applied (every guard false): nothing was decided by a flow, nothing to record.
            await self._log(decision, ctx, context, pending_ids, trigger=trigger)
        if decision.outcome == "allow":
            used = [rid for (_f, _s), (_v, st, rid) in existing.items() if st == "approved"]
            if used:
                await asyncio.to_thread(self._consume, used)
            if decision.notices:
                await asyncio.to_thread(self._notify, decision, ctx, context)
        return decision, pending_ids

    # -- credential.rotate and token.revoke --------------------------------------------------------------
    async def check_operation(
        self, trigger: str, client_id: str, metadata: Mapping[str, Any], actor: str, request: Mapping[str, Any]
    ) -> None:
        """``credential.rotate``: a denial or a pending approval stops the rotation (``AccessDenied`` /
        ``AuthorizationPending``). ``token.revoke``: the decision is recorded and its notices sent, but a
        revocation is never held back by a flow."""
        if not any(f.on == trigger for f in self._flows):
            return
        now = int(self._now())
        ctx = IssuanceContext(trigger, client_id, metadata, [], [], 0, actor)
        context = {
            "client": _client_context(client_id, metadata),
            "request": dict(request),
            "source": {"hour": (now // 3600) % 24},
        }
        decision, pending = await self._run(trigger, ctx, context, None)
        if trigger == "token.revoke":
            return
        if decision.outcome == "deny":
            raise AccessDenied(f"denied by flow: {decision.reason}", client_id=client_id)
        if decision.outcome == "pending":
            raise AuthorizationPending(f"an approval is required ({', '.join(pending) or 'a hook'}); retry later")

    async def _call(self, call: HookCall, context: dict[str, Any]) -> dict[str, Any]:
        """POST the context to the hook; anything but a timely ``{"allow": true}`` denies (fail closed)."""
        try:
            r = await self._hooks.post(
                call.url,
                json={"flow": call.flow, "step": call.step, "version": call.version, "context": redact(context)},
                timeout=call.timeout,
            )
        except httpx.TimeoutException:
            return {"error": "timeout"}
        except httpx.HTTPError as e:
            return {"error": f"hook unreachable ({type(e).__name__})"}
        if r.status_code != 200:
            return {"error": f"hook answered {r.status_code}"}
        try:
            body = r.json()
        except ValueError:
            return {"error": "hook answered no JSON"}
        if not isinstance(body, dict):
            return {"error": "hook answered no object"}
        return {"allow": body.get("allow") is True, "reason": str(body.get("reason", ""))[:200]}

    def _existing_approvals(self, fingerprint: str, now: int) -> dict[tuple[str, str], tuple[str, str, str]]:
        """(flow, step) → (version, status, request id) of this fingerprint's live approval requests."""
        prefix = f"flow:{fingerprint}:"
        rows = self._store.read(
            lambda c: c.execute(
                sa.select(
                    approval_requests.c.origin,
                    approval_requests.c.status,
                    approval_requests.c.request_id,
                    approval_requests.c.expires_at,
                )
                .where(approval_requests.c.origin.like(prefix + "%"))
                .order_by(approval_requests.c.created_at)
            ).all()
        )
        out: dict[tuple[str, str], tuple[str, str, str]] = {}
        for origin, status, rid, expires_at in rows:
            _, _, key, version = origin.split(":", 3)
            flow_id, step = key.split("/", 1)
            if status == "pending" and expires_at <= now:
                status = "expired"
            out[(flow_id, step)] = (version, status, rid)
        return out

    async def _open_approval(self, need: Any, ctx: IssuanceContext, fingerprint: str) -> str:
        body = {
            "requester": ctx.client_id,
            "action": {"credential.rotate": "rotate the client's credential"}.get(
                ctx.grant, f"issue a token ({ctx.grant})"
            ),
            "resource": ", ".join(ctx.audience) or "-",
            "scope": list(ctx.scope),
            "on_behalf_of": ctx.subject if ctx.subject != ctx.client_id else None,
            "approvers": list(need.people),
            "groups": list(need.groups),
            "quorum": need.quorum,
            "assurance": need.assurance,
            "ttl": min(need.timeout, self._approvals.config.max_ttl),
            "environment": {"flow": need.flow, "step": need.step, "version": need.version},
        }
        origin = f"flow:{fingerprint}:{need.flow}/{need.step}:{need.version}"
        self._open = True
        try:
            view = await asyncio.to_thread(self._approvals.create_request, body, ctx.client_id, origin)
        except ApprovalError as e:
            raise AccessDenied(f"the approval this request needs cannot be opened: {e.description}") from None
        return str(view["request_id"])

    def _consume(self, request_ids: list[str]) -> None:
        """An approval covers one issuance: afterwards it no longer matches the fingerprint."""
        with self._store.transaction() as conn:
            for rid in request_ids:
                conn.execute(
                    sa.update(approval_requests)
                    .where(approval_requests.c.request_id == rid)
                    .values(origin=sa.func.replace(approval_requests.c.origin, "flow:", "flow-used:"))
                )

    def _notify(self, decision: Decision, ctx: IssuanceContext, context: Mapping[str, Any]) -> None:
        for n in decision.notices:
            source = context.get("source", {})
            if n.responses and self._incidents is not None:
                shown = {
                    "network": source.get("network"),
                    "ip": source.get("ip"),
                    "hour": source.get("hour"),
                    "attributes": dict(ctx.federation.get("attributes", {})) if ctx.federation else {},
                    "grant": ctx.grant,
                    "subject": ctx.subject,
                    "scope": list(ctx.scope),
                }
                try:
                    self._incidents.open_alert(
                        ctx.client_id,
                        dict(source.get("new") or {}),
                        redact(shown),
                        people=list(n.people),
                        groups=list(n.groups),
                        owners=n.owners,
                        responses=n.responses,
                        message=n.message,
                        origin=f"{n.flow}/{n.step}@{dict(decision.flows).get(n.flow, '')}",
                    )
                except ApprovalError as e:
                    log.warning("flow alert %s/%s not sent: %s", n.flow, n.step, e.description)
                continue
            try:
                self._approvals.notify(
                    list(n.people),
                    list(n.groups),
                    subject=f"Tessera: {n.message or n.flow}",
                    text=f"{n.message}\n\nClient: {ctx.client_id}\nGrant: {ctx.grant}\nScope: {' '.join(ctx.scope)}\n"
                    f"Audience: {', '.join(ctx.audience)}\nFlow: {n.flow}/{n.step}",
                    ref=f"{n.flow}/{n.step}",
                    owners_of=ctx.client_id if n.owners else None,
                )
            except ApprovalError as e:
                log.warning("flow notice %s/%s not sent: %s", n.flow, n.step, e.description)

    async def _log(
        self,
        decision: Decision,
        ctx: IssuanceContext,
        context: dict[str, Any],
        approvals: list[str],
        trigger: str = "token.issue",
    ) -> None:
        event = AuditEvent(
            "flow.decision",
            actor=ctx.client_id,
            subject=ctx.subject,
            data={
                "trigger": trigger,
                "grant": ctx.grant,
                **decision.to_json(),
                "approval_requests": approvals,
                "inputs": redact(context),
            },
        )
        try:
            if self._store.writer.running:  # the server: the next group commit, before any token
                await self._store.audit(event)
            else:  # the CLI: a transaction of its own
                await asyncio.to_thread(self._store.write, lambda c: None, [event])
        except Exception:
            log.exception("the flow decision could not be recorded: denying")
            error = InvalidClientMetadata if trigger == "client.register" else _DENY.get(ctx.grant, AccessDenied)
            raise error("the decision could not be recorded; denied", client_id=ctx.client_id) from None
        self.on_decision(trigger, decision.outcome)
