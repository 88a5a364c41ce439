"""What the demo prints: each step as it happens (rich), and a JSON summary for machines.

Every step ends as a ``StepResult``; a step fails by raising (``StepFailed`` with a sentence a newcomer
understands, or anything unexpected, reported with its type). The summary is what ``--json`` prints
and what the tests read.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

__all__ = ["Report", "StepFailed", "StepResult"]


class StepFailed(Exception):
    """A step of the story did not happen as it should; the message says what was seen instead."""


@dataclass
class StepResult:
    id: str
    title: str
    ok: bool = False
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Report:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.steps: list[StepResult] = []
        self.started = time.monotonic()
        self._number = 0

    def title(self, text: str, subtitle: str) -> None:
        self.console.print(Panel(f"[bold]{escape(text)}[/]\n{escape(subtitle)}", border_style="cyan", expand=False))

    @contextmanager
    def step(self, step_id: str, title: str, *, numbered: bool = True) -> Iterator[StepResult]:
        result = StepResult(step_id, title)
        self.steps.append(result)
        if numbered:
            self._number += 1
        label = f"{self._number}. {title}" if numbered else title
        self.console.print()
        self.console.rule(f"[bold]{escape(label)}[/]", align="left", style="cyan")
        t0 = time.monotonic()
        try:
            yield result
        except Exception as e:
            result.seconds = round(time.monotonic() - t0, 2)
            message = str(e) if isinstance(e, StepFailed) else f"{type(e).__name__}: {e}"
            result.error = message
            self.console.print(f"[bold red]✗ {escape(label)} — failed:[/] {escape(message)}")
            raise StepFailed(message) from e
        except BaseException:  # ^C or SIGTERM: the runner reports it and cleans up
            result.seconds = round(time.monotonic() - t0, 2)
            result.error = "interrupted"
            raise
        result.ok = True
        result.seconds = round(time.monotonic() - t0, 2)
        self.console.print(f"[bold green]✓ {escape(label)}[/] [dim]({result.seconds:.1f} s)[/]")

    def say(self, text: str, **values: Any) -> None:
        """One line of the story; ``values`` are shown highlighted after it."""
        extra = "  ".join(f"[dim]{escape(k)}=[/][bold]{escape(str(v))}[/]" for k, v in values.items())
        self.console.print(f"  {escape(text)}" + (f"  {extra}" if extra else ""))

    def link(self, label: str, url: str) -> None:
        self.console.print(
            Panel(f"[link={url}]{escape(url)}[/link]", title=escape(label), border_style="yellow", expand=False)
        )

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    def summary(self, scenario: str, data_dir: str | None) -> dict[str, Any]:
        failed = next((s for s in self.steps if not s.ok), None)
        return {
            "ok": self.ok,
            "scenario": scenario,
            "seconds": round(time.monotonic() - self.started, 2),
            "failed_step": failed.id if failed else None,
            "error": failed.error if failed else None,
            "data_dir": data_dir,
            "steps": [asdict(s) for s in self.steps],
        }

    def table(self) -> None:
        table = Table(title="The story", show_lines=False, title_justify="left")
        table.add_column("step")
        table.add_column("result")
        table.add_column("s", justify="right")
        for s in self.steps:
            mark = "[green]✓ ok[/]" if s.ok else "[red]✗ failed[/]"
            if s.error == "interrupted":
                mark = "[yellow]interrupted[/]"
            table.add_row(escape(s.title), mark, f"{s.seconds:.1f}")
        self.console.print()
        self.console.print(table)
