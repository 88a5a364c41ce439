"""Runs a scenario in a fresh world and always cleans up: success, a failed step, ^C or SIGTERM.

Exit status: 0 when every step passed, 1 when one failed (the message names the step and what was
seen), 130 when interrupted.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from rich.console import Console

from tessera.demo import payments
from tessera.demo.report import Report, StepFailed
from tessera.demo.world import World

__all__ = ["SCENARIOS", "DemoOptions", "run"]

Scenario = Callable[..., None]

#: The MCP scenario's ``--break`` steps (kept here: ``tessera.demo.mcp`` imports the optional ``mcp`` SDK).
MCP_BREAKS = {"approval": "Sam denies the tool call on the phone: the agent gets access_denied and nothing is paid"}
MCP_EXTRA = "the MCP scenario needs the mcp SDK: pip install 'tessera[mcp]'"


def _play_mcp(world: World, report: Report, **options: Any) -> None:
    """``tessera.demo.mcp.play``, imported only now; without the ``mcp`` extra the setup step fails saying so."""
    try:
        from tessera.demo import mcp
    except ImportError as e:
        with report.step("setup", "The MCP scenario's dependencies", numbered=False) as step:
            step.details["data_dir"] = str(world.data_dir)
            raise StepFailed(f"{MCP_EXTRA} ({e.name} is not installed)") from None
    mcp.play(world, report, **options)


#: name → play(world, report, *, auto_approve, timeout, breaks)
SCENARIOS: dict[str, tuple[Scenario, dict[str, str]]] = {
    "payments": (payments.play, payments.BREAKS),
    "mcp": (_play_mcp, MCP_BREAKS),
}


@dataclass(frozen=True)
class DemoOptions:
    scenario: str = "payments"
    auto_approve: bool = False
    timeout: float = 300.0  # how long the interactive mode waits for a person's decision
    json: bool = False
    keep: bool = False
    breaks: str | None = None


class _Terminated(BaseException):  # not an Exception: a step must not report it as its own failure
    pass


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


def _close_uninterrupted(world: World) -> None:
    """Stop everything; a second ^C or a SIGTERM during the clean-up must not leave a server behind."""
    if threading.current_thread() is not threading.main_thread():
        world.close()
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        world.close()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def run(options: DemoOptions, console: Console | None = None) -> int:
    play, breaks = SCENARIOS[options.scenario]
    if options.breaks is not None and options.breaks not in breaks:
        raise ValueError(f"--break must be one of {', '.join(breaks)}")
    if console is None:
        console = Console(stderr=options.json, highlight=False)
        if not console.is_terminal:  # a CI log: no wrapping at 80 columns
            console = Console(stderr=options.json, highlight=False, width=140)
    report = Report(console)
    mode = "unattended (--auto-approve)" if options.auto_approve else "interactive: you approve in your browser"
    report.title("Tessera demo — the whole story", f"scenario {options.scenario}, {mode}")
    previous: Any = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    world: World | None = None
    status = 1
    try:
        world = World(keep=options.keep)
        play(world, report, auto_approve=options.auto_approve, timeout=options.timeout, breaks=options.breaks)
        status = 0
    except StepFailed:
        status = 1
    except (KeyboardInterrupt, _Terminated):
        console.print("\n[bold yellow]interrupted[/]: stopping everything the demo started")
        status = 130
    finally:
        data_dir = str(world.data_dir) if world is not None else None
        if world is not None:
            if status != 0 and world.server.exited():
                console.print(f"[dim]tessera serve exited; its log ends with: {world.server.log_tail(5)}[/]")
            elif status == 1 and not options.keep:
                console.print("[dim]--keep keeps the data directory (database, server log) for a closer look[/]")
            _close_uninterrupted(world)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    report.table()
    summary = report.summary(options.scenario, data_dir if options.keep else None)
    if status == 130:
        summary.update(ok=False, error="interrupted")
    if status == 0:
        console.print(
            f"[bold green]The whole story played: {len(report.steps)} steps passed[/] in {summary['seconds']:.1f} s."
        )
        if options.scenario == "payments":
            console.print(
                "[dim]Next: an agent calling MCP tools, Sam approving one call: tessera demo --scenario mcp[/]"
            )
    elif status == 1:
        console.print(
            f"[bold red]tessera demo failed at step '{summary['failed_step']}':[/] {summary['error']}", soft_wrap=True
        )
    if options.keep and data_dir:
        console.print(f"data kept in {data_dir}")
    if options.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        sys.stdout.flush()
    return status
