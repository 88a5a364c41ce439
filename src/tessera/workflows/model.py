"""Flows as values: what the loader produces and the engine evaluates (docs/flows.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tessera.federation.cel import Expression

__all__ = ["KINDS", "TRIGGERS", "Condition", "Flow", "Step"]

TRIGGERS = ("client.register", "token.issue", "credential.rotate", "token.revoke")
KINDS = ("require", "deny", "approve", "limit", "notify", "call", "allow")
#: the triggers whose flows change who gets a credential: a high-risk one needs an approve or limit step
HIGH_RISK_TRIGGERS = ("client.register", "token.issue", "credential.rotate")


@dataclass(frozen=True)
class Condition:
    """A CEL expression, or all / any / not of conditions."""

    op: str  # "cel" | "all" | "any" | "not"
    expression: Expression | None = None
    parts: tuple[Condition, ...] = ()

    def sources(self) -> list[str]:
        if self.expression is not None:
            return [self.expression.source]
        return [s for p in self.parts for s in p.sources()]


@dataclass(frozen=True)
class Step:
    id: str
    kind: str
    #: the kind's own settings (approve: people, groups, quorum, assurance, timeout; limit: …)
    spec: Mapping[str, Any]
    when: Condition | None = None
    condition: Condition | None = None  # require
    reason: str | None = None
    line: int | None = None


@dataclass(frozen=True)
class Flow:
    id: str
    on: str
    steps: tuple[Step, ...]
    description: str = ""
    grants: tuple[str, ...] = ()
    when: Condition | None = None
    risk: str = "low"
    #: the document as parsed (JSON-shaped), whose canonical hash is the version
    document: Mapping[str, Any] = field(default_factory=dict, repr=False)
    version: str = ""
    source: str = ""
    #: the context roots the flow's conditions read (client, request, …): only these are converted to
    #: CEL values when it is evaluated
    roots: frozenset[str] = frozenset({"client", "request", "federation", "person", "source", "now"})

    def applies_to_grant(self, grant: str | None) -> bool:
        return not self.grants or grant in self.grants
