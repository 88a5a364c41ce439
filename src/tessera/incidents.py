"""Incident responses: alerts on a request context never seen for a client, answered by its owners,
client suspension (the status list's SUSPENDED, reversible) and the quarantine of a trusted issuer.

docs/alerts.md. A flow reads ``source.new`` (which parts of the request's context were never seen for
this client: ``network``, ``attributes``, ``hour``) and a ``notify`` step with ``responses`` turns a
notice into an alert. Each recipient gets a link of their own (256 bits, stored hashed) to a page that
shows the alert and the choices; a choice becomes an approval request for that person alone, decided
on the ordinary approval page with their authenticator (docs/approvals.md): nobody can suspend, resume
or revoke a client by holding a link. The approved choice takes effect at once and is audited:

- ``acknowledge``: the context is known from now on; nothing else changes;
- ``suspend``: the client's live tokens become SUSPENDED (0x02, draft-ietf-oauth-status-list §7.1) and
  the client gets no new token; ``resume`` undoes both (tokens revoked meanwhile stay revoked);
- ``revoke``: the client's live tokens are revoked (with the tokens exchanged from them) and the client
  is quarantined: no token until an approval revalidates its ownership and scope.

A quarantined trusted issuer's tokens are refused (token exchange, JWT bearer, federated client
authentication) until an approval lifts it. Approved choices and lifts are applied by the approval
service's decision hook and, should a process stop in between, by a sweep: the approval request's
origin is renamed in the same transaction as the effect, so each is applied exactly once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, cast

import rfc8785
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from tessera.approvals.errors import LinkUnusable
from tessera.approvals.records import ApprovalTx
from tessera.approvals.service import ApprovalService, hash_token
from tessera.audit import AuditEvent
from tessera.oauth.revocation import TokenSelector, revocation_event
from tessera.oauth.status_list import SUSPENDED, VALID
from tessera.store.sql import repo
from tessera.store.sql.store import SqlStore
from tessera.store.sql.tables import (
    alert_links,
    alerts,
    approval_requests,
    client_contexts,
    issued_tokens,
    issuer_quarantines,
)

__all__ = [
    "CHOICES",
    "KINDS",
    "AlertError",
    "ContextWatch",
    "Incidents",
    "attributes_digest",
    "network_of",
]

log = logging.getLogger("tessera.incidents")

#: the parts of a request's context that are watched per client
KINDS = ("network", "attributes", "hour")
#: what an alert's recipients may answer in each state of the alert
CHOICES: dict[str, tuple[str, ...]] = {
    "open": ("acknowledge", "suspend", "revoke"),
    "acknowledged": ("suspend", "revoke"),
    "suspended": ("resume", "revoke"),
    "resumed": ("suspend", "revoke"),
    "revoked": (),
}
_RESULT = {"acknowledge": "acknowledged", "suspend": "suspended", "resume": "resumed", "revoke": "revoked"}
_VERB = {
    "acknowledge": "Acknowledge the new context of",
    "suspend": "Suspend",
    "resume": "Resume (un-suspend)",
    "revoke": "Revoke every token of, and quarantine,",
}


class AlertError(ValueError):
    """An alert that does not exist, or a response it does not allow now."""


def network_of(ip: str | None) -> str | None:
    """The network a source address is counted in: IPv4 /24, IPv6 /56 (a site's usual allocation)."""
    if not ip:
        return None
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 56
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def attributes_digest(federation: Mapping[str, Any] | None) -> str | None:
    """A short digest of the federated identity's mapped attributes (with its trust and issuer)."""
    if not federation:
        return None
    canonical = rfc8785.dumps(
        {
            "trust": federation.get("trust"),
            "issuer": federation.get("issuer"),
            "attributes": federation.get("attributes") or {},
        }
    )
    return hashlib.sha256(canonical).hexdigest()[:32]


def _insert_ignore(conn: sa.Connection, table: sa.Table, values: dict[str, Any]) -> bool:
    """INSERT … ON CONFLICT DO NOTHING; True when this statement inserted the row."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    key = next(iter(table.primary_key.columns))
    stmt = dialect.insert(table).values(**values).on_conflict_do_nothing().returning(key)
    return conn.execute(stmt).first() is not None


class ContextWatch:
    """Which parts of a request's context were never seen for the client.

    A client's first observation of a kind is learning, not news; an hour counts as new only once the
    client has been watched for ``learning_period`` seconds. Known contexts are remembered in memory,
    so a known context costs no database access; a new one is inserted with ON CONFLICT DO NOTHING, so
    of several processes that see it at once exactly one reports it.
    """

    def __init__(self, store: SqlStore, now: Callable[[], float], *, learning_period: int) -> None:
        self._store = store
        self._now = now
        self._learning = learning_period
        self._known: set[tuple[str, str, str]] = set()

    def observe(self, client_id: str, features: Mapping[str, str | None]) -> dict[str, bool]:
        seen = {k: v for k, v in features.items() if v is not None}
        misses = {k: v for k, v in seen.items() if (client_id, k, v) not in self._known}
        new: dict[str, bool] = {}
        if misses:
            now = int(self._now())
            with self._store.transaction() as conn:
                for kind, value in misses.items():
                    new[kind] = self._observe(conn, client_id, kind, value, now)
            if len(self._known) > 100_000:
                self._known.clear()
            self._known.update((client_id, k, v) for k, v in misses.items())
        out = {k: new.get(k, False) for k in KINDS}
        out["any"] = any(out.values())
        return out

    def _observe(self, conn: sa.Connection, client_id: str, kind: str, value: str, now: int) -> bool:
        c = client_contexts.c
        key = (c.client_id == client_id, c.kind == kind)
        if conn.execute(sa.select(c.first_seen).where(*key, c.value == value)).first() is not None:
            conn.execute(sa.update(client_contexts).where(*key, c.value == value).values(last_seen=now))
            return False
        earliest = conn.execute(sa.select(sa.func.min(c.first_seen)).where(*key)).scalar()
        inserted = _insert_ignore(
            conn,
            client_contexts,
            {"client_id": client_id, "kind": kind, "value": value[:128], "first_seen": now, "last_seen": now},
        )
        if not inserted or earliest is None:
            return False
        return kind != "hour" or int(earliest) <= now - self._learning


def _alert_view(row: Any) -> dict[str, Any]:
    return {
        "alert_id": row.alert_id,
        "client_id": row.client_id,
        "status": row.status,
        "new": list(row.kinds),
        "context": dict(row.context),
        "responses": list(row.responses),
        "choices": [c for c in CHOICES.get(row.status, ()) if c == "resume" or c in row.responses],
        "origin": row.origin,
        "created_at": int(row.created_at),
        "expires_at": int(row.expires_at),
        "updated_at": int(row.updated_at),
        "history": list(row.history),
    }


class Incidents:
    """Alerts and their responses, client suspension, issuer quarantine (see the module docstring)."""

    def __init__(
        self,
        store: SqlStore,
        approvals: ApprovalService,
        *,
        issuer: str,
        now: Callable[[], float],
        link_ttl: int = 7 * 86400,
        assurance: str = "aal1",
        status_changed: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._approvals = approvals
        self._issuer = issuer.rstrip("/")
        self._now = now
        self._link_ttl = link_ttl
        self._assurance = assurance
        self._status_changed = status_changed
        self._quarantined: frozenset[str] = frozenset()
        self._quarantine_read = -1.0
        approvals.decided_hooks.append(self._decided)

    # -- alerts ------------------------------------------------------------------------------------------
    def open_alert(
        self,
        client_id: str,
        new: Mapping[str, bool],
        context: Mapping[str, Any],
        *,
        people: list[str],
        groups: list[str],
        owners: bool,
        responses: tuple[str, ...],
        message: str,
        origin: str,
    ) -> str:
        """Record the alert and send each recipient their response link, in one transaction."""
        now = int(self._now())
        alert_id = "alr_" + secrets.token_urlsafe(12)
        kinds = [k for k in KINDS if new.get(k)]
        expires = now + self._link_ttl

        def also(tx: ApprovalTx) -> None:
            conn = cast(Any, tx).conn
            conn.execute(
                sa.insert(alerts).values(
                    alert_id=alert_id,
                    client_id=client_id,
                    status="open",
                    kinds=kinds,
                    context=dict(context),
                    responses=list(responses),
                    origin=origin[:256],
                    created_at=now,
                    expires_at=expires,
                    updated_at=now,
                    history=[],
                )
            )
            tx.audit(
                AuditEvent(
                    "alert.opened",
                    actor="flows",
                    subject=client_id,
                    data={"alert_id": alert_id, "new": kinds, "context": dict(context), "origin": origin},
                )
            )

        def each(tx: ApprovalTx, person: Any) -> tuple[str, dict[str, Any]]:
            token = secrets.token_urlsafe(32)
            cast(Any, tx).conn.execute(
                sa.insert(alert_links).values(
                    token_hash=hash_token(token),
                    alert_id=alert_id,
                    person_id=person.person_id,
                    created_at=now,
                    expires_at=expires,
                )
            )
            url = f"{self._issuer}/alert/{token}"
            text = (
                f"\n\nAnswer ({', '.join(responses)}) here; you confirm with your passkey or code:\n{url}\n"
                "Until someone answers, the client keeps working."
            )
            return text, {"alert_id": alert_id, "link": url, "responses": list(responses), "new": kinds}

        shown = ", ".join(f"{k} {context.get(k)}" for k in kinds)
        self._approvals.notify(
            people,
            groups,
            owners_of=client_id if owners else None,
            subject=f"Tessera alert: {client_id} from a context never seen ({', '.join(kinds)})",
            text=f"{message or 'A token request came from a context never seen for this client.'}\n\n"
            f"Client: {client_id}\nNew: {shown}\n",
            ref=alert_id,
            kind="alert.opened",
            also=also,
            each=each,
        )
        return alert_id

    def list_alerts(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q = sa.select(alerts).order_by(alerts.c.created_at.desc()).limit(limit)
        if status:
            q = q.where(alerts.c.status == status)
        return [_alert_view(r) for r in self._store.read(lambda c: c.execute(q).all())]

    def get_alert(self, alert_id: str) -> dict[str, Any]:
        row = self._store.read(lambda c: c.execute(sa.select(alerts).where(alerts.c.alert_id == alert_id)).first())
        if row is None:
            raise AlertError(f"no alert {alert_id}")
        return _alert_view(row)

    def open_link(self, token: str) -> tuple[dict[str, Any], str]:
        """The alert behind a response link, and the person it was sent to."""
        now = int(self._now())

        def work(c: sa.Connection) -> tuple[Any, Any]:
            link = c.execute(sa.select(alert_links).where(alert_links.c.token_hash == hash_token(token))).first()
            if link is None:
                return None, None
            return link, c.execute(sa.select(alerts).where(alerts.c.alert_id == link.alert_id)).first()

        link, row = self._store.read(work)
        if link is None or row is None:
            raise LinkUnusable("unknown", "This link is not valid.")
        if link.expires_at <= now:
            raise LinkUnusable("expired", "This link has expired.")
        return _alert_view(row), str(link.person_id)

    def start_response(self, token: str, choice: str) -> str:
        """The person behind the link chose: open an approval request for them alone; its page URL."""
        alert, person_id = self.open_link(token)
        if choice not in alert["choices"]:
            raise AlertError(f"this alert cannot be answered with {choice!r} now ({alert['status']})")
        body = {
            "requester": "tessera-alerts",
            "action": f"{_VERB[choice]} the client {alert['client_id']}",
            "resource": alert["client_id"],
            "approvers": [person_id],
            "quorum": 1,
            "assurance": self._assurance,
            "ttl": 600,
            "environment": {
                "alert": alert["alert_id"],
                "response": choice,
                "new": ", ".join(f"{k} {alert['context'].get(k)}" for k in alert["new"])[:500],
            },
        }
        origin = f"alert:{alert['alert_id']}:{choice}"
        view = self._approvals.create_request(body, person_id, origin, deliver=False)
        return str(view["links"][person_id])

    def respond(self, alert_id: str, choice: str, actor: str) -> dict[str, Any]:
        """An operator's answer (admin API, CLI): applied at once, audited with the operator's name."""
        alert = self.get_alert(alert_id)
        if choice not in alert["choices"]:
            raise AlertError(f"this alert cannot be answered with {choice!r} now ({alert['status']})")
        with self._store.transaction() as conn:
            self._apply(conn, alert_id, choice, actor, None)
        self._after(alert["client_id"])
        return self.get_alert(alert_id)

    def _apply(self, conn: sa.Connection, alert_id: str, choice: str, actor: str, request_id: str | None) -> None:
        row = conn.execute(sa.select(alerts).where(alerts.c.alert_id == alert_id)).first()
        if row is None:
            return
        if choice not in CHOICES.get(row.status, ()):
            log.warning("alert %s: %s no longer applies (%s)", alert_id, choice, row.status)
            return
        now = int(self._now())
        client_id = row.client_id
        t = issued_tokens.c
        live = [t.client_id == client_id, t.revoked_at.is_(None), t.exp >= now - self._store.leeway]
        data: dict[str, Any] = {"alert_id": alert_id, "response": choice, "request_id": request_id}
        events: list[AuditEvent] = []
        client = repo.get_client(conn, client_id)
        md = dict(client.metadata) if client is not None else {}
        if choice == "suspend":
            n = conn.execute(sa.update(issued_tokens).where(*live, t.status == VALID).values(status=SUSPENDED)).rowcount
            md["suspended"] = {"alert": alert_id, "since": now, "by": actor}
            data["suspended_tokens"] = n
            events.append(AuditEvent("client.suspended", actor=actor, subject=client_id, data=data))
        elif choice == "resume":
            n = conn.execute(sa.update(issued_tokens).where(*live, t.status == SUSPENDED).values(status=VALID)).rowcount
            md.pop("suspended", None)
            data["resumed_tokens"] = n
            events.append(AuditEvent("client.resumed", actor=actor, subject=client_id, data=data))
        elif choice == "revoke":
            selector = TokenSelector(client_id=client_id)
            revoked = repo.revoke_tokens(conn, selector, now, now - self._store.leeway)
            # Suspended tokens of the client are revoked too (revoke_tokens takes every live one).
            events.append(revocation_event(selector, revoked, actor=actor, via=f"alert {alert_id}"))
            md.pop("suspended", None)
            md["quarantined"] = {"since": now, "reason": f"alert {alert_id}: revoked by {actor}"}
            events.append(AuditEvent("client.quarantined", actor=actor, subject=client_id, data=data))
        if client is not None and md != client.metadata:
            repo.update_client(conn, replace(client, metadata=md, updated_at=now))
        history = [*row.history, {"response": choice, "by": actor, "at": now, "request_id": request_id}]
        conn.execute(
            sa.update(alerts)
            .where(alerts.c.alert_id == alert_id)
            .values(status=_RESULT[choice], updated_at=now, history=history)
        )
        events.append(AuditEvent(f"alert.{_RESULT[choice]}", actor=actor, subject=client_id, data=data))
        repo.append_audit(conn, events, self._store.now_ms())

    def _after(self, client_id: str) -> None:
        self._store.forget_client(client_id)
        self._status_changed()

    # -- decisions of the approval requests this module opened ------------------------------------------------
    def _decided(self, request_id: str, outcome: str, origin: str | None) -> None:
        if outcome == "approved" and origin and origin.startswith(("alert:", "issuer-lift:")):
            self.sweep(only=request_id)

    def sweep(self, only: str | None = None) -> int:
        """Apply every approved response and issuer lift not applied yet; returns how many."""
        r = approval_requests.c
        q = sa.select(r.request_id, r.origin, r.requester).where(
            r.status == "approved", sa.or_(r.origin.like("alert:%"), r.origin.like("issuer-lift:%"))
        )
        if only is not None:
            q = q.where(r.request_id == only)
        done = 0
        for request_id, origin, _requester in self._store.read(lambda c: c.execute(q.limit(100)).all()):
            kind, _, rest = origin.partition(":")
            client_id: str | None = None
            with self._store.transaction() as conn:
                renamed = conn.execute(
                    sa.update(approval_requests)
                    .where(r.request_id == request_id, r.origin == origin)
                    .values(origin=f"{kind}-done:{rest}")
                ).rowcount
                if not renamed:
                    continue  # another process applied it
                if kind == "alert":
                    alert_id, _, choice = rest.partition(":")
                    voter = conn.execute(
                        sa.text("SELECT person_id FROM approval_votes WHERE request_id = :r"), {"r": request_id}
                    ).scalar()
                    self._apply(conn, alert_id, choice, f"person:{voter}", request_id)
                    client_id = conn.execute(
                        sa.select(alerts.c.client_id).where(alerts.c.alert_id == alert_id)
                    ).scalar()
                else:
                    self._lift_issuer(conn, rest, request_id)
            done += 1
            if client_id:
                self._after(client_id)
            else:
                self._quarantine_read = -1.0
        return done

    # -- quarantine of a trusted issuer -------------------------------------------------------------------
    def issuer_exists(self, name: str) -> bool:
        return any(i.name == name for i in self._store.read(repo.list_trusted_issuers))

    def quarantine_issuer(self, name: str, reason: str, actor: str) -> dict[str, Any]:
        now = int(self._now())
        with self._store.transaction() as conn:
            inserted = _insert_ignore(
                conn,
                issuer_quarantines,
                {"name": name, "since": now, "reason": reason[:500], "actor": actor[:256], "lift_request": None},
            )
            if inserted:
                repo.append_audit(
                    conn,
                    [AuditEvent("issuer.quarantined", actor=actor, subject=name, data={"reason": reason[:500]})],
                    self._store.now_ms(),
                )
        self._quarantine_read = -1.0
        return self.issuer_quarantine(name) or {}

    def issuer_quarantine(self, name: str) -> dict[str, Any] | None:
        q = sa.select(issuer_quarantines).where(issuer_quarantines.c.name == name)
        row = self._store.read(lambda c: c.execute(q).first())
        if row is None:
            return None
        return {
            "name": row.name,
            "since": int(row.since),
            "reason": row.reason,
            "actor": row.actor,
            "lift_request": row.lift_request,
        }

    def request_issuer_lift(self, name: str, body: dict[str, Any], actor: str) -> dict[str, Any]:
        """Open the approval that lifts an issuer's quarantine (its trust configuration revalidated)."""
        marker = self.issuer_quarantine(name)
        if marker is None:
            raise AlertError(f"the trusted issuer {name} is not quarantined")
        request = {
            **{k: v for k, v in body.items() if k in ("approvers", "groups", "quorum", "assurance", "ttl")},
            "requester": actor,
            "action": "lift the quarantine of a trusted issuer (its configuration and mappings revalidated)",
            "resource": f"trusted issuer {name}",
            "environment": {"reason": marker["reason"], "since": str(marker["since"])},
        }
        view = self._approvals.create_request(request, actor, f"issuer-lift:{name}")
        with self._store.transaction() as conn:
            conn.execute(
                sa.update(issuer_quarantines)
                .where(issuer_quarantines.c.name == name)
                .values(lift_request=view["request_id"])
            )
            repo.append_audit(
                conn,
                [
                    AuditEvent(
                        "issuer.quarantine_lift_requested",
                        actor=actor,
                        subject=name,
                        data={"request_id": view["request_id"]},
                    )
                ],
                self._store.now_ms(),
            )
        return view

    def _lift_issuer(self, conn: sa.Connection, name: str, request_id: str) -> None:
        q = issuer_quarantines.c
        gone = conn.execute(sa.delete(issuer_quarantines).where(q.name == name, q.lift_request == request_id)).rowcount
        if gone:
            repo.append_audit(
                conn,
                [
                    AuditEvent(
                        "issuer.quarantine_lifted", actor="approvals", subject=name, data={"request_id": request_id}
                    )
                ],
                self._store.now_ms(),
            )

    def quarantined_issuers(self, max_age: float = 2.0) -> frozenset[str]:
        """The names of quarantined trusted issuers, read again when older than ``max_age`` seconds
        (a quarantine set by another process applies here within that)."""
        now = self._now()
        if now - self._quarantine_read >= max_age:
            names = self._store.read(lambda c: c.execute(sa.select(issuer_quarantines.c.name)).scalars().all())
            self._quarantined, self._quarantine_read = frozenset(names), now
        return self._quarantined
