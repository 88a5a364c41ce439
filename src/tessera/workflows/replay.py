"""Replay: what a candidate flow set would have decided for the decisions already made.

Each ``flow.decision`` record keeps its inputs (redacted), the external results it saw (approval
outcomes and hook answers, in its trace) and its time; the engine being a pure function, the record
is evaluated again against the candidate and the two outcomes compared. Records without inputs
cannot be replayed and are listed apart, never silently counted as unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .engine import Recorded, evaluate
from .model import HIGH_RISK_TRIGGERS, Flow

__all__ = ["ReplayReport", "recorded_results", "replay"]


@dataclass
class ReplayReport:
    total: int = 0
    unchanged: int = 0
    #: change → the audit seq of each decision that would change that way
    changes: dict[str, list[int]] = field(default_factory=dict)
    unreplayable: list[tuple[int, str]] = field(default_factory=list)

    @property
    def high_risk_opened(self) -> list[int]:
        """deny → allow on a high-risk trigger: publishing this needs an approval."""
        return [s for k, seqs in self.changes.items() if k.startswith("deny→allow") for s in seqs]

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "unchanged": self.unchanged,
            "changes": {k: v for k, v in sorted(self.changes.items())},
            "unreplayable": [{"seq": s, "why": w} for s, w in self.unreplayable],
        }

    def render(self, show: int = 20) -> str:
        lines = [f"{self.total} decision(s) replayed: {self.unchanged} unchanged"]
        for kind, seqs in sorted(self.changes.items()):
            more = f" … and {len(seqs) - show} more" if len(seqs) > show else ""
            lines.append(f"  {kind}: {len(seqs)} (seq {', '.join(map(str, seqs[:show]))}{more})")
        if self.unreplayable:
            lines.append(f"  cannot be replayed: {len(self.unreplayable)}")
            for seq, why in self.unreplayable[:show]:
                lines.append(f"    seq {seq}: {why}")
        return "\n".join(lines)


def recorded_results(trace: Sequence[str]) -> Recorded:
    """The external results a decision saw, from its trace ("flow/step:result")."""
    approvals: dict[str, str] = {}
    hooks: dict[str, Mapping[str, Any]] = {}
    for entry in trace:
        key, _, result = entry.rpartition(":")
        if result in ("approved", "denied", "expired", "cancelled"):
            approvals[key] = result
        elif result == "passed":
            hooks[key] = {"allow": True}  # a require step ignores it; a call step needs it
        elif result == "failed":
            hooks[key] = {"allow": False, "reason": "recorded failure"}
    return Recorded(approvals=approvals, hooks=hooks)


def replay(
    records: Iterable[Mapping[str, Any]],
    candidate: Sequence[Flow],
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    report = ReplayReport()
    for record in records:
        report.total += 1
        if progress is not None:
            progress(1)
        seq = int(record.get("seq", 0))
        data = record.get("data") or {}
        inputs, trigger = data.get("inputs"), data.get("trigger")
        if not isinstance(inputs, dict) or not isinstance(trigger, str):
            report.unreplayable.append((seq, "the record has no inputs or trigger"))
            continue
        before = str(data.get("outcome"))
        recorded = recorded_results(data.get("trace") or [])
        try:
            after = evaluate(candidate, trigger, inputs, recorded, int(record.get("ts", 0)) // 1000, data.get("grant"))
        except Exception as e:  # a record the engine cannot take at all (a malformed input)
            report.unreplayable.append((seq, f"evaluation failed: {type(e).__name__}"))
            continue
        kinds = []
        if after.outcome != before:
            risk = " (high-risk trigger)" if trigger in HIGH_RISK_TRIGGERS else ""
            kinds.append(f"{before}→{after.outcome}{risk}")
        needed_before = set(data.get("approvals") or [])
        needed_after = {a.key for a in after.approvals}
        if needed_after - needed_before and after.outcome == "pending":
            kinds.append("approvals added")
        if needed_before - needed_after and before == "pending":
            kinds.append("approvals removed")
        if not kinds:
            report.unchanged += 1
        for k in kinds:
            report.changes.setdefault(k, []).append(seq)
    return report
