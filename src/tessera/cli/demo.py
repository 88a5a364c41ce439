"""``tessera demo``: watch the whole story (docs/demo.md)."""

from __future__ import annotations

import sys

import click

__all__ = ["demo"]

_BREAKS = ("federation", "approval", "audit")


@click.command()
@click.option(
    "--auto-approve",
    is_flag=True,
    help="Unattended (CI): Sam's phone approves with its authenticator app's code over HTTP.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(10, 3600),
    default=300.0,
    show_default=True,
    help="Seconds the interactive mode waits for your decision on the approval page.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print a JSON summary of the steps on stdout (the story on stderr)."
)
@click.option("--keep", is_flag=True, help="Keep the temporary data directory (database, server log, audit export).")
@click.option(
    "--break",
    "breaks",
    type=click.Choice(_BREAKS),
    help="Make one step fail on purpose, for real: federation (a token from another organisation), "
    "approval (Sam denies), audit (a record rewritten in the database). The mcp scenario: approval only.",
)
# The names of tessera.demo.SCENARIOS, listed here so that `tessera --help` needs no demo import.
@click.option(
    "--scenario",
    type=click.Choice(["payments", "mcp"]),
    default="payments",
    show_default=True,
    help="payments: the whole story. mcp: an agent calls an MCP tool server; Sam approves one tool call "
    "(needs tessera[mcp]).",
)
def demo(auto_approve: bool, timeout: float, as_json: bool, keep: bool, breaks: str | None, scenario: str) -> None:
    """Watch the whole story: Tessera, a CI job, an agent, an approver's phone, a payments API.

    Starts Tessera on the embedded default with a fake CI issuer, an AI agent, the approver's phone
    and a payments API, and plays the story. A CI job federates in; an agent asks for a payment
    scope and a person approves it (CIBA); the payments API verifies the token offline; a
    revocation reaches it; the audit chain verifies.
    Everything runs on 127.0.0.1 in a temporary directory and is stopped and removed at the end.
    Exit status 0 when every step passed, 1 when one failed.
    """
    try:
        from tessera.demo import DemoOptions, run
    except ImportError as e:
        raise click.ClickException(
            f"{e.name}: the demo needs the server and the demo extras; pip install 'tessera[server,demo]'"
        ) from None
    if breaks is not None and scenario == "mcp" and breaks != "approval":
        raise click.UsageError("the mcp scenario can only --break approval")
    options = DemoOptions(
        scenario=scenario, auto_approve=auto_approve, timeout=timeout, json=as_json, keep=keep, breaks=breaks
    )
    sys.exit(run(options))
