"""What a verification decision was based on, for the caller's logs."""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["Report"]


class Report(NamedTuple):
    """A tuple, not a dataclass: one is built for every verification."""

    #: seconds since the keys used were fetched (or the bundle was issued)
    keys_age: float | None
    #: how old the status information is: seconds since the list token's iat; None without a status entry
    status_age: float | None
    #: True when a refresh was due but the decision used older cached data within its limit
    stale: bool
    source: str = "network"

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()
