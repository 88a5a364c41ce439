"""Comparing flow sets: what publishing a candidate directory would change."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .model import Flow

__all__ = ["diff"]


def diff(published: Sequence[Flow], candidate: Sequence[Flow]) -> list[dict[str, Any]]:
    """One entry per flow that differs: added, removed or changed (with both versions)."""
    old = {f.id: f for f in published}
    new = {f.id: f for f in candidate}
    out: list[dict[str, Any]] = []
    for fid in sorted(old.keys() | new.keys()):
        a, b = old.get(fid), new.get(fid)
        if a is None and b is not None:
            out.append({"flow": fid, "change": "added", "version": b.version, "on": b.on})
        elif b is None and a is not None:
            out.append({"flow": fid, "change": "removed", "version": a.version, "on": a.on})
        elif a is not None and b is not None and a.version != b.version:
            out.append({"flow": fid, "change": "changed", "from": a.version, "to": b.version, "on": b.on})
    return out
