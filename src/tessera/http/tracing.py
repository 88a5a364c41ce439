"""Optional OpenTelemetry traces (``otel = true``, the ``otel`` extra).

Off by default. When on and ``opentelemetry-sdk`` is installed, the server makes spans around
request handling (``Telemetry``: method, route template, status), store transactions
(``store.transaction``, ``store.read``, ``store.group_commit`` with its batch size: ``tessera.spans``)
and outbound HTTP calls through the guarded transport (trusted issuers' discovery and JWKS, client
``jwks_uri``, CIBA pings, flow hooks: ``GET host``). Spans go to the exporter the standard ``OTEL_*``
environment variables name (``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT``...), through a
batch processor; a program embedding Tessera may install its own ``TracerProvider`` first, which is
then used as is.
"""

from __future__ import annotations

import logging
from typing import Any

from tessera import spans
from tessera.settings import Settings

__all__ = ["tracer"]

log = logging.getLogger("tessera.http")


def tracer(settings: Settings) -> Any:
    """The tracer for request spans, or None when tracing is off or the SDK is missing."""
    if not settings.otel:
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        log.warning("otel = true but opentelemetry-sdk is not installed (pip install 'tessera[otel]'): no traces")
        return None
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        _exporter(provider)
        trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("tessera")
    spans.enable(tracer)
    return tracer


def _exporter(provider: Any) -> None:
    """The exporter named by OTEL_TRACES_EXPORTER: console, or otlp when its package is installed."""
    import os

    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")[0].strip()
    exporter: Any = None
    if name == "console":
        exporter = ConsoleSpanExporter()
    elif name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        except ImportError:
            log.warning("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http: no traces exported")
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
