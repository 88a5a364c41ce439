"""``tessera alerts``: context alerts and the operator's answers (docs/alerts.md), and the quarantine
of a trusted issuer (``tessera alerts quarantine-issuer``). Response links are never printed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from tessera.cli.common import echo_json, fail, runtime

if TYPE_CHECKING:
    from tessera.incidents import Incidents

ACTOR = "cli"


@contextmanager
def _incidents() -> Iterator[Incidents]:
    from tessera.approval_runtime import approval_service
    from tessera.incidents import Incidents

    rt = runtime()
    try:
        yield Incidents(
            rt.store,
            approval_service(rt),
            issuer=rt.settings.issuer,
            now=rt.clock.now,
            link_ttl=rt.settings.alert_link_ttl,
            assurance=rt.settings.alert_response_assurance,
        )
    finally:
        rt.close()


@click.group()
def alerts() -> None:
    """Alerts on a context never seen for a client (new network, federated attributes, hour)."""


@alerts.command("list")
@click.option("--status", type=click.Choice(["open", "acknowledged", "suspended", "resumed", "revoked"]))
def alerts_list(status: str | None) -> None:
    """One line per alert: id, client, status, what was new, when."""
    with _incidents() as inc:
        for a in inc.list_alerts(status):
            click.echo(f"{a['alert_id']}\t{a['client_id']}\t{a['status']}\t{','.join(a['new'])}\t{a['created_at']}")


@alerts.command("show")
@click.argument("alert_id")
def alerts_show(alert_id: str) -> None:
    """Print an alert (context, choices, history) as JSON."""
    from tessera.incidents import AlertError

    with _incidents() as inc:
        try:
            echo_json(inc.get_alert(alert_id))
        except AlertError as e:
            fail(str(e))


@alerts.command("respond")
@click.argument("alert_id")
@click.argument("response", type=click.Choice(["acknowledge", "suspend", "resume", "revoke"]))
def alerts_respond(alert_id: str, response: str) -> None:
    """Answer an alert as the operator: applied at once and audited. (Running servers show a suspension
    in their status lists within their cache time.)"""
    from tessera.incidents import AlertError

    with _incidents() as inc:
        try:
            out = inc.respond(alert_id, response, ACTOR)
        except AlertError as e:
            fail(str(e))
        click.echo(f"{alert_id}\t{out['status']}")


@alerts.command("quarantine-issuer")
@click.argument("name")
@click.option("--reason", default="", help="Why (kept in the audit record).")
def alerts_quarantine_issuer(name: str, reason: str) -> None:
    """Quarantine a trusted issuer: its tokens are refused until an approval lifts it
    (POST /admin/issuers/{name}/quarantine/lift)."""
    with _incidents() as inc:
        if not inc.issuer_exists(name):
            fail(f"no trusted issuer {name}")
        inc.quarantine_issuer(name, reason, ACTOR)
        click.echo(f"quarantined {name}")
