"""Optional trace spans for code below the HTTP layer (store transactions, outbound calls).

A no-op unless the server enabled tracing (``otel = true`` with the OpenTelemetry SDK installed,
see ``tessera.http.tracing``): then ``span`` is the tracer's ``start_as_current_span``, so a span
made in a thread started with ``asyncio.to_thread`` is a child of the request's span.
"""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["enable", "span"]

_NULL = contextlib.nullcontext()
_tracer: list[Any] = []


def enable(tracer: Any) -> None:
    _tracer[:] = [tracer] if tracer is not None else []


def span(name: str, attributes: dict[str, Any] | None = None) -> Any:
    if not _tracer:
        return _NULL
    return _tracer[0].start_as_current_span(name, attributes=attributes)
