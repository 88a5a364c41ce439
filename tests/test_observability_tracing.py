"""OpenTelemetry traces (``otel = true``): spans for requests, store work and their nesting.

The application runs in this process (its lifespan driven by hand, requests through httpx's ASGI
transport) so that the SDK's in-memory exporter can collect what it reports.
"""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

import httpx
from opentelemetry import trace as api
from opentelemetry.sdk import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


async def _with_lifespan(app: Any, work: Any) -> Any:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        return await work()
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task


def test_spans_for_requests_and_store_work(tmp_path: pathlib.Path) -> None:
    from tessera.http.app import build_app
    from tessera.runtime import open_runtime
    from tessera.settings import load_settings

    exporter = InMemorySpanExporter()
    provider = trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    api.set_tracer_provider(provider)
    issuer = "http://127.0.0.1:9"
    settings = load_settings(
        {
            "TESSERA_DATA_DIR": str(tmp_path / "data"),
            "TESSERA_ISSUER": issuer,
            "TESSERA_OTEL": "true",
            "TESSERA_ADMIN_TOKEN": "admin-token-123",
        }
    )
    app = build_app(open_runtime(settings))

    async def work() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=issuer) as c:
            assert (await c.get("/healthz")).status_code == 200
            r = await c.post(
                "/admin/clients",
                json={"grant_types": ["client_credentials"], "scope": "read"},
                headers={"Authorization": "Bearer admin-token-123"},
            )
            assert r.status_code == 201, r.text
            client = r.json()
            r = await c.post(
                "/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(client["client_id"], client["client_secret"]),
            )
            assert r.status_code == 200, r.text

    asyncio.run(_with_lifespan(app, work))
    spans = exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    assert {"GET /healthz", "POST /admin/clients", "POST /oauth/token"} <= set(by_name), sorted(by_name)
    token = by_name["POST /oauth/token"]
    assert token.attributes["http.route"] == "/oauth/token" and token.attributes["http.response.status_code"] == 200
    assert token.kind == api.SpanKind.SERVER
    store = [s for s in spans if s.name.startswith("store.")]
    assert store, sorted(by_name)
    requests = {s.context.span_id: s for s in spans if s.kind == api.SpanKind.SERVER}
    nested = [s for s in store if s.parent is not None and s.parent.span_id in requests]
    assert nested, "no store span is the child of a request span"
    commits = [s for s in store if s.name == "store.group_commit"]
    assert commits and all(s.attributes["tessera.batch_size"] >= 1 for s in commits)
