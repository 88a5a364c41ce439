"""What a verification decision was based on, for the caller's logs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Report"]


@dataclass(frozen=True)
class Report:
    #: seconds since the keys used were fetched (or the bundle was issued)
    keys_age: float | None
    #: seconds since the status list used was fetched; None when the token has no status entry
    status_age: float | None
    #: True when a refresh was due but the decision used older cached data within its limit
    stale: bool
    source: str = "network"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
