"""``tessera demo``: the whole story on one laptop, with real processes talking real HTTP on loopback.

Tessera runs on its embedded default (``tessera serve``, SQLite in a temporary directory); around it
a fake CI platform (an OpenID-style issuer of workload identity tokens), an AI agent (a CIBA client),
Sam the approver's phone (a Standard Webhooks receiver and an authenticator app) and a payments API
(a relying party verifying with ``tessera.verify``). ``run`` plays a scenario step by step and
returns the exit status; ``docs/demo.md`` tells the story.

Scenarios are registered in ``SCENARIOS`` (name → a function playing it in a ``World``). Only
``payments`` exists; an MCP scenario (an agent calling an MCP tool server with a Tessera token, issue
9) would add ``tessera/demo/mcp.py`` with a ``play(world, report, *, auto_approve, timeout, breaks)``
of its own and one entry here, reusing the world (server, CI issuer, phone) as it is.
"""

from __future__ import annotations

from tessera.demo.runner import SCENARIOS, DemoOptions, run

__all__ = ["SCENARIOS", "DemoOptions", "run"]
