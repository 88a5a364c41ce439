"""``tessera people``, ``tessera approvals``, ``tessera outbox``: approvers, approval requests and the
messages that reach people (docs/approvals.md). Links and codes are never printed: they go only to
the person's channels."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from tessera.cli.common import echo_json, fail, json_option, runtime

if TYPE_CHECKING:
    from tessera.approvals.service import ApprovalService

ACTOR = "cli"


@contextmanager
def _service() -> Iterator[ApprovalService]:
    from tessera.approval_runtime import approval_service

    rt = runtime()
    try:
        yield approval_service(rt)
    finally:
        rt.close()


def _person_view(pair: Any) -> dict[str, Any]:
    from tessera.http.admin_approvals import person_view

    return person_view(*pair)


# -- people ----------------------------------------------------------------------------------------------
@click.group()
def people() -> None:
    """Approvers: who they are, their groups and channels, their authenticators (passkeys, TOTP)."""


@people.command("list")
def people_list() -> None:
    """One line per person: id, name, groups, authenticators, lock state."""
    with _service() as s:
        for rec, auths in s.list_people():
            p = rec.person
            kinds = ",".join(sorted({a.kind for a in auths})) or "none"
            state = "locked" if rec.locked_at is not None else "agent" if p.agent else "ok"
            click.echo(f"{p.person_id}\t{p.name}\t{','.join(p.groups) or '-'}\t{kinds}\t{state}\t{rec.source}")


@people.command("show")
@click.argument("person_id")
def people_show(person_id: str) -> None:
    """Print a person as JSON."""
    with _service() as s:
        echo_json(_person_view(s.get_person(person_id)))


@people.command("put")
@click.argument("person_id")
@click.option("--name", help="Display name.")
@click.option("--email", help="E-mail address (also a CIBA login_hint).")
@click.option("--group", "groups", multiple=True, help="Group membership (repeatable).")
@click.option("--channel", "channels", multiple=True, help="email, file or webhook:<name> (repeatable).")
@click.option("--owns", multiple=True, help="A principal (client id) this person owns (repeatable).")
@click.option("--agent", is_flag=True, help="A non-human entry: gets notices, never approves.")
@click.option("--json", "raw", help="The whole profile as a JSON object instead of the options.")
def people_put(
    person_id: str,
    name: str | None,
    email: str | None,
    groups: tuple[str, ...],
    channels: tuple[str, ...],
    owns: tuple[str, ...],
    agent: bool,
    raw: str | None,
) -> None:
    """Create or replace a person."""
    profile: dict[str, Any] = json_option(raw, "--json", want_object=True) if raw else {}
    for key, value in (("name", name), ("email", email)):
        if value is not None:
            profile[key] = value
    for key, values in (("groups", groups), ("channels", channels), ("owns", owns)):
        if values:
            profile[key] = list(values)
    if agent:
        profile["agent"] = True
    with _service() as s:
        _, created = s.put_person(profile, person_id, ACTOR)
        click.echo(f"{'created' if created else 'updated'} {person_id}")


@people.command("remove")
@click.argument("person_id")
def people_remove(person_id: str) -> None:
    """Delete a person and their authenticators."""
    with _service() as s:
        s.delete_person(person_id, ACTOR)
        click.echo(f"removed {person_id}")


@people.command("enrol")
@click.argument("person_id")
def people_enrol(person_id: str) -> None:
    """Send the person a one-time link to enrol a passkey or TOTP app (on their own channels)."""
    with _service() as s:
        out = s.start_enrolment(person_id, ACTOR)
        click.echo(
            f"enrolment link sent to {person_id} ({len(out['messages'])} message(s)); valid until {out['expires_at']}"
        )


@people.command("unlock")
@click.argument("person_id")
def people_unlock(person_id: str) -> None:
    """Reset a person locked after too many failed proofs."""
    with _service() as s:
        s.unlock_person(person_id, ACTOR)
        click.echo(f"unlocked {person_id}")


@people.command("remove-authenticator")
@click.argument("person_id")
@click.argument("authenticator_id")
def people_remove_authenticator(person_id: str, authenticator_id: str) -> None:
    """Remove one authenticator (the person is notified on their channels)."""
    with _service() as s:
        s.remove_authenticator(person_id, authenticator_id, ACTOR)
        click.echo(f"removed {authenticator_id} from {person_id}")


# -- approval requests ---------------------------------------------------------------------------------------
@click.group()
def approvals() -> None:
    """Approval requests: open, inspect, resend, cancel."""


@approvals.command("list")
@click.option("--status", type=click.Choice(["pending", "approved", "denied", "expired", "cancelled"]))
def approvals_list(status: str | None) -> None:
    """One line per request, newest first."""
    with _service() as s:
        for r in s.list_requests(status):
            tx = r["transaction"]
            votes = sum(1 for v in r["votes"] if v["decision"] == "approve")
            click.echo(
                f"{r['request_id']}\t{r['status']}\t{votes}/{r['quorum']}\t{tx['requester']}\t{tx['action']}\t"
                f"{tx['resource']}"
            )


@approvals.command("show")
@click.argument("request_id")
def approvals_show(request_id: str) -> None:
    """Print a request, its transaction and its votes as JSON."""
    with _service() as s:
        echo_json(s.get_request(request_id))


@approvals.command("create")
@click.option("--requester", required=True, help="Who asks (client id or principal).")
@click.option("--action", required=True)
@click.option("--resource", required=True)
@click.option("--approver", "approvers", multiple=True, help="A person id (repeatable).")
@click.option("--group", "groups", multiple=True, help="A group whose members may approve (repeatable).")
@click.option("--quorum", type=int, default=1, show_default=True)
@click.option("--assurance", type=click.Choice(["aal1", "aal2", "aal3"]), default="aal2", show_default=True)
@click.option("--ttl", type=int, default=600, show_default=True, help="Seconds until unanswered means denied.")
@click.option("--json", "raw", help="Further transaction fields as JSON (scope, authorization_details, ...).")
def approvals_create(
    requester: str,
    action: str,
    resource: str,
    approvers: tuple[str, ...],
    groups: tuple[str, ...],
    quorum: int,
    assurance: str,
    ttl: int,
    raw: str | None,
) -> None:
    """Open an approval request; the eligible people get one-time links on their channels."""
    body: dict[str, Any] = json_option(raw, "--json", want_object=True) if raw else {}
    body.update(
        requester=requester,
        action=action,
        resource=resource,
        approvers=list(approvers),
        groups=list(groups),
        quorum=quorum,
        assurance=assurance,
        ttl=ttl,
    )
    with _service() as s:
        out = s.create_request(body, ACTOR, origin="cli")
        click.echo(f"{out['request_id']}\tcheck code {out['check_code']}\texpires {out['expires_at']}")


def _request_command(name: str, call: Callable[[ApprovalService, str], dict[str, Any]], doc: str) -> None:
    @approvals.command(name, help=doc)
    @click.argument("request_id")
    def command(request_id: str) -> None:
        with _service() as s:
            out = call(s, request_id)
            click.echo(f"{request_id}\t{out['status']}")


_request_command("cancel", lambda s, rid: s.cancel(rid, ACTOR), "Cancel a pending request.")
_request_command(
    "resend", lambda s, rid: s.resend(rid, ACTOR), "New links to those who have not voted (old links stop working)."
)


# -- the outbox ------------------------------------------------------------------------------------------
@click.group()
def outbox() -> None:
    """Outgoing messages: what is pending, delivered or dead-lettered (bodies stay sealed)."""


@outbox.command("list")
@click.option("--status", type=click.Choice(["pending", "delivered", "dead"]))
@click.option("--limit", type=int, default=100, show_default=True)
def outbox_list(status: str | None, limit: int) -> None:
    """One line per message: id, status, channel, kind, recipient, attempts, last error."""
    from tessera.store.sql.outbox import SqlOutbox

    rt = runtime()
    try:
        box = SqlOutbox(rt.store.write_engine, rt.store.now_ms)
        for m in box.list_messages(status=status, limit=limit):
            click.echo(
                f"{m['message_id']}\t{m['status']}\t{m['channel']}\t{m['kind']}\t{m['recipient']}\t"
                f"attempts={m['attempts']}\t{m.get('last_error') or ''}"
            )
    finally:
        rt.close()


@outbox.command("retry")
@click.argument("message_id")
def outbox_retry(message_id: str) -> None:
    """Send a dead-lettered message again (a running server picks it up)."""
    from tessera.store.sql.outbox import SqlOutbox

    rt = runtime()
    try:
        if not SqlOutbox(rt.store.write_engine, rt.store.now_ms).requeue(message_id, ACTOR):
            fail(f"no dead-lettered message {message_id}")
        click.echo(f"{message_id} queued again")
    finally:
        rt.close()
