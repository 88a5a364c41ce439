"""The flow engine: a decision is a pure function of (flow versions, context, recorded external
results, clock). It never calls out: an ``approve`` or ``call`` step without a recorded result makes
the decision ``pending`` and says what is needed; the caller obtains it (an approval request, an HTTP
hook with a timeout), records it and evaluates again. Replaying a decision with its recorded inputs
gives the same answer.

Fail closed: a condition that cannot be evaluated (a missing field, a type error) denies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tessera.federation.cel import CelError, activation

from .model import Condition, Flow, Step

__all__ = ["ApprovalNeed", "Decision", "HookCall", "Limits", "Notice", "Recorded", "TraceEntry", "evaluate"]


@dataclass(frozen=True)
class Recorded:
    """External results, keyed ``"<flow id>/<step id>"``: approval outcomes ("approved", "denied",
    "expired") and hook answers (``{"allow": bool, "reason": str}`` or ``{"error": "timeout"}``)."""

    approvals: Mapping[str, str] = field(default_factory=dict)
    hooks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Limits:
    lifetime: int | None = None
    scopes: frozenset[str] | None = None
    audiences: frozenset[str] | None = None

    def combine(self, spec: Mapping[str, Any]) -> Limits:
        lifetime = spec.get("lifetime")
        scopes = frozenset(spec["scopes"]) if "scopes" in spec else None
        audiences = frozenset(spec["audiences"]) if "audiences" in spec else None
        return Limits(
            lifetime=min(x for x in (self.lifetime, lifetime) if x is not None)
            if self.lifetime is not None or lifetime is not None
            else None,
            scopes=self.scopes & scopes if self.scopes is not None and scopes is not None else self.scopes or scopes,
            audiences=self.audiences & audiences
            if self.audiences is not None and audiences is not None
            else self.audiences or audiences,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.lifetime is not None:
            out["lifetime"] = self.lifetime
        if self.scopes is not None:
            out["scopes"] = sorted(self.scopes)
        if self.audiences is not None:
            out["audiences"] = sorted(self.audiences)
        return out


@dataclass(frozen=True)
class ApprovalNeed:
    flow: str
    version: str
    step: str
    people: tuple[str, ...]
    groups: tuple[str, ...]
    quorum: int
    assurance: str
    timeout: int

    @property
    def key(self) -> str:
        return f"{self.flow}/{self.step}"


@dataclass(frozen=True)
class Notice:
    flow: str
    step: str
    people: tuple[str, ...]
    groups: tuple[str, ...]
    message: str
    #: also the people who own the client (``owns`` in their record)
    owners: bool = False
    #: an alert: the recipients may answer with these (acknowledge, suspend, revoke); docs/alerts.md
    responses: tuple[str, ...] = ()


@dataclass(frozen=True)
class HookCall:
    flow: str
    version: str
    step: str
    url: str
    timeout: float

    @property
    def key(self) -> str:
        return f"{self.flow}/{self.step}"


@dataclass(frozen=True)
class TraceEntry:
    flow: str
    step: str
    kind: str
    result: str
    detail: str = ""

    def short(self) -> str:
        return f"{self.flow}/{self.step}:{self.result}"


@dataclass(frozen=True)
class Decision:
    outcome: str  # "allow" | "deny" | "pending"
    reasons: tuple[str, ...] = ()
    limits: Limits = Limits()
    approvals: tuple[ApprovalNeed, ...] = ()
    calls: tuple[HookCall, ...] = ()
    notices: tuple[Notice, ...] = ()
    trace: tuple[TraceEntry, ...] = ()
    #: (flow id, version) of every flow that applied
    flows: tuple[tuple[str, str], ...] = ()

    @property
    def reason(self) -> str | None:
        return "; ".join(self.reasons) if self.reasons else None

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "reasons": list(self.reasons),
            "limits": self.limits.to_json(),
            "approvals": [a.key for a in self.approvals],
            "calls": [c.key for c in self.calls],
            "notices": [f"{n.flow}/{n.step}" for n in self.notices],
            "trace": [t.short() for t in self.trace],
            "flows": [{"id": f, "version": v} for f, v in self.flows],
        }


_DEFAULT_ROOTS = ("client", "request", "federation", "person", "source")


def _holds(cond: Condition, act: Any) -> bool:
    if cond.op == "cel":
        assert cond.expression is not None
        return cond.expression.evaluate_bool(act)
    if cond.op == "all":
        return all(_holds(p, act) for p in cond.parts)
    if cond.op == "any":
        return any(_holds(p, act) for p in cond.parts)
    return not _holds(cond.parts[0], act)


@dataclass
class _Run:
    trace: list[TraceEntry] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    approvals: list[ApprovalNeed] = field(default_factory=list)
    calls: list[HookCall] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    limits: Limits = Limits()
    denied: bool = False


def _step(flow: Flow, step: Step, act: Any, recorded: Recorded, run: _Run) -> str | None:
    """Evaluate one step; return "stop" to end this flow (allow, deny or pending), else None."""
    key = f"{flow.id}/{step.id}"

    def trace(result: str, detail: str = "") -> None:
        run.trace.append(TraceEntry(flow.id, step.id, step.kind, result, detail))

    if step.when is not None and not _holds(step.when, act):
        trace("skipped")
        return None
    if step.kind == "require":
        assert step.condition is not None
        if _holds(step.condition, act):
            trace("passed")
            return None
        trace("failed")
        run.reasons.append(step.reason or f"{key}: requirement not met")
        run.denied = True
        return "stop"
    if step.kind == "deny":
        trace("denied")
        run.reasons.append(step.reason or f"{key}: denied")
        run.denied = True
        return "stop"
    if step.kind == "allow":
        trace("allowed")
        return "stop"
    if step.kind == "limit":
        run.limits = run.limits.combine(step.spec)
        trace("applied")
        return None
    if step.kind == "notify":
        run.notices.append(
            Notice(
                flow.id,
                step.id,
                tuple(step.spec.get("people", ())),
                tuple(step.spec.get("groups", ())),
                str(step.spec.get("message", "")),
                bool(step.spec.get("owners", False)),
                tuple(step.spec.get("responses", ())),
            )
        )
        trace("notified")
        return None
    if step.kind == "approve":
        outcome = recorded.approvals.get(key)
        if outcome == "approved":
            trace("approved")
            return None
        if outcome in ("denied", "expired", "cancelled"):
            trace(outcome)
            run.reasons.append(step.reason or f"{key}: approval {outcome}")
            run.denied = True
            return "stop"
        run.approvals.append(
            ApprovalNeed(
                flow.id,
                flow.version,
                step.id,
                tuple(step.spec.get("people", ())),
                tuple(step.spec.get("groups", ())),
                int(step.spec.get("quorum", 1)),
                str(step.spec.get("assurance", "aal2")),
                int(step.spec.get("timeout", 600)),
            )
        )
        trace("pending")
        return "stop"
    if step.kind == "call":
        answer = recorded.hooks.get(key)
        if answer is None:
            run.calls.append(
                HookCall(flow.id, flow.version, step.id, str(step.spec["url"]), float(step.spec.get("timeout", 2)))
            )
            trace("pending")
            return "stop"
        if answer.get("allow") is True:
            trace("passed")
            return None
        # A timeout, an error or anything but an explicit allow denies (fail closed).
        why = answer.get("reason") or answer.get("error") or "the hook did not allow"
        trace("failed", str(why)[:200])
        run.reasons.append(step.reason or f"{key}: {str(why)[:200]}")
        run.denied = True
        return "stop"
    raise AssertionError(step.kind)


def evaluate(
    flows: Sequence[Flow],
    trigger: str,
    context: Mapping[str, Any],
    recorded: Recorded | None = None,
    now: int = 0,
    grant: str | None = None,
) -> Decision:
    recorded = recorded or Recorded()
    candidates = sorted((f for f in flows if f.on == trigger and f.applies_to_grant(grant)), key=lambda f: f.id)
    # Only the context the candidate flows read is converted to CEL values (most of an evaluation's cost).
    roots = frozenset().union(*(f.roots for f in candidates)) if candidates else frozenset()
    variables: dict[str, Any] = {root: dict(context.get(root) or {}) for root in _DEFAULT_ROOTS if root in roots}
    if "now" in roots:
        variables["now"] = now
    act = activation(**variables)
    run = _Run()
    applied: list[tuple[str, str]] = []
    for flow in candidates:
        try:
            if flow.when is not None and not _holds(flow.when, act):
                continue
            applied.append((flow.id, flow.version))
            for step in flow.steps:
                if _step(flow, step, act, recorded, run) == "stop":
                    break
        except CelError as e:
            # Fail closed: a condition that cannot be evaluated denies, naming the flow.
            applied.append((flow.id, flow.version)) if (flow.id, flow.version) not in applied else None
            run.trace.append(TraceEntry(flow.id, "-", "error", "error", str(e)[:200]))
            run.reasons.append(f"{flow.id}: a condition could not be evaluated ({str(e)[:160]})")
            run.denied = True
    if run.denied:
        outcome = "deny"
    elif run.calls or run.approvals:
        outcome = "pending"
    else:
        outcome = "allow"
    return Decision(
        outcome=outcome,
        reasons=tuple(run.reasons),
        limits=run.limits,
        approvals=tuple(run.approvals) if outcome == "pending" else (),
        calls=tuple(run.calls) if outcome == "pending" else (),
        notices=tuple(run.notices) if outcome == "allow" else (),
        trace=tuple(run.trace),
        flows=tuple(applied),
    )


def triggers(flows: Iterable[Flow]) -> set[str]:
    return {f.on for f in flows}
