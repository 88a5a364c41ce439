"""MCP benchmark: what token verification adds to one MCP tool call.

One ``tessera serve`` (SQLite) issues a token; one child process serves, under uvicorn on 127.0.0.1,
the same MCP tool server (``balance``, from examples/mcp/server.py) four ways:

- **open**: no authorization at all (the baseline);
- **sdk-auth-only**: the SDK's own authorization machinery (bearer middleware, scope check, session
  ownership) with a token verifier that checks nothing: what the SDK costs before Tessera does anything;
- **protected**: ``tessera.verify.mcp.McpProtection`` — the SDK's bearer middleware calling
  ``TesseraTokenVerifier`` (keys and status list cached; a token seen before skips its signature
  check), plus the per-tool guard reading the JSON-RPC body;
- **protected, no cache**: the same with the verifier's verified-token cache off, so every call
  checks the ES256 signature (the cost of a token the server has not seen before).

This process is the agent: the ``mcp`` SDK's streamable HTTP client, one session per variant, calls
``balance`` one at a time, variants interleaved in rounds. Reported: p50/p99 per call and the ratio
to the open server, and the added latency in microseconds.

    python bench/mcp.py            # 10 rounds of 300 calls per variant
    python bench/mcp.py --quick    # 3 rounds of 100

Results go to ``bench/results/mcp.json``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
# Run as a script, this file's directory comes first on the path and its name would hide the mcp package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
sys.path.insert(0, str(REPO_DIR / "tests"))
sys.path.insert(0, str(REPO_DIR / "examples" / "mcp"))

VARIANTS = ("open", "sdk-auth-only", "protected", "protected-no-cache")


def serve(issuer: str, ports: list[int]) -> None:
    """The child process: the three variants of the tool server, each on its own port."""
    import logging

    import uvicorn
    from mcp.server.mcpserver import MCPServer

    logging.disable(logging.INFO)  # the SDK logs every session at INFO

    import server as example  # examples/mcp/server.py

    from tessera.verify import Verifier

    def open_app(url: str) -> Any:
        mcp = MCPServer("ledger")

        @mcp.tool()
        def balance(account: str) -> str:
            return f"{account}: 100.00 EUR"

        return mcp.streamable_http_app(json_response=True)

    def protected(url: str) -> Any:
        return example.build(issuer, url)[0]

    def sdk_auth_only(url: str) -> Any:
        """The SDK's own auth machinery with a verifier that checks nothing: what the SDK costs by itself."""
        from mcp.server.auth.provider import AccessToken

        class AcceptAll:
            async def verify_token(self, token: str) -> AccessToken:
                return AccessToken(
                    token=token, client_id="bench", scopes=["tools"], expires_at=int(time.time()) + 3600, resource=url
                )

        protection = example.McpProtection(issuer, url, required_scopes=["tools"])
        mcp = MCPServer("ledger", token_verifier=AcceptAll(), auth=protection.auth_settings())

        @mcp.tool()
        def balance(account: str) -> str:
            return f"{account}: 100.00 EUR"

        return mcp.streamable_http_app(json_response=True)

    def no_cache(url: str) -> Any:
        verifier = Verifier(issuer, audiences=[url], require_status=True, max_act_depth=1, verified_cache_size=0)
        return example.build(issuer, url, verifier=verifier)[0]

    async def main() -> None:
        servers = []
        for port, build in zip(ports, (open_app, sdk_auth_only, protected, no_cache), strict=True):
            app = build(f"http://127.0.0.1:{port}/mcp")
            config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
            servers.append(uvicorn.Server(config))
        await asyncio.gather(*(s.serve() for s in servers))

    asyncio.run(main())


async def measure(urls: dict[str, str], token: str, rounds: int, calls: int) -> dict[str, list[float]]:
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            headers = {} if variant == "open" else {"Authorization": f"Bearer {token}"}
            async with (
                httpx2.AsyncClient(headers=headers, timeout=30) as http,
                streamable_http_client(urls[variant], http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                for _ in range(20):  # warm-up: keys, status list, connection
                    await session.call_tool("balance", {"account": "ops"})
                for _ in range(calls):
                    t0 = time.perf_counter()
                    result = await session.call_tool("balance", {"account": "ops"})
                    samples[variant].append(time.perf_counter() - t0)
                    assert not result.is_error
    return samples


def verify_only(issuer: str, audience: str, token: str, n: int) -> dict[str, float]:
    """The verifier alone, in this process: microseconds per ``averify`` with and without the cache."""
    from tessera.verify import Verifier

    out = {}
    for name, cache in (("cached", 10_000), ("no-cache", 0)):
        verifier = Verifier(issuer, audiences=[audience], require_status=True, verified_cache_size=cache)

        async def run(v: Verifier = verifier) -> list[float]:
            await v.averify(token)
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                await v.averify(token)
                times.append(time.perf_counter() - t0)
            return times

        times = asyncio.run(run())
        out[name + "_p50_us"] = round(percentile(times, 0.5) * 1e6, 1)
        out[name + "_p99_us"] = round(percentile(times, 0.99) * 1e6, 1)
        verifier.close()
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int)
    p.add_argument("--calls", type=int)
    p.add_argument("--output", default=str(BENCH_DIR / "results" / "mcp.json"))
    p.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve[0], [int(x) for x in args.serve[1:]])
        return 0
    rounds = args.rounds or (3 if args.quick else 10)
    calls = args.calls or (100 if args.quick else 300)

    from support import LiveServer, free_port

    with tempfile.TemporaryDirectory(prefix="tessera-bench-mcp-") as tmp:
        srv = LiveServer(Path(tmp) / "data").start()
        ports = [free_port() for _ in VARIANTS]
        urls = {v: f"http://127.0.0.1:{port}/mcp" for v, port in zip(VARIANTS, ports, strict=True)}
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", srv.issuer, *map(str, ports)], env=os.environ.copy()
        )
        try:
            deadline = time.monotonic() + 30
            for url in urls.values():
                while True:
                    try:
                        httpx.get(url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp"), timeout=1)
                        break
                    except httpx.HTTPError:
                        if time.monotonic() > deadline:
                            raise RuntimeError("the MCP servers did not start") from None
                        time.sleep(0.1)
            client = srv.register(scope="tools", allowed_resources=list(urls.values())[1:])
            r = httpx.post(
                srv.token_endpoint,
                data={
                    "grant_type": "client_credentials",
                    "scope": "tools",
                    "resource": [urls["sdk-auth-only"], urls["protected"], urls["protected-no-cache"]],
                },
                auth=(client["client_id"], client["client_secret"]),
            )
            r.raise_for_status()
            token = r.json()["access_token"]
            samples = asyncio.run(measure(urls, token, rounds, calls))
            alone = verify_only(srv.issuer, urls["protected"], token, 20 * calls)
        finally:
            child.terminate()
            child.wait(10)
            srv.stop()

    base50, base99 = percentile(samples["open"], 0.5), percentile(samples["open"], 0.99)
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "rounds": rounds,
        "calls_per_round": calls,
        "variants": {},
    }
    print(f"MCP tool call latency over loopback, {rounds} x {calls} calls per variant (ms)")
    print(f"{'variant':<20}{'p50':>8}{'p99':>8}{'p50/open':>10}{'p99/open':>10}{'added p50 (us)':>16}")
    for variant in VARIANTS:
        p50, p99 = percentile(samples[variant], 0.5), percentile(samples[variant], 0.99)
        report["variants"][variant] = {
            "p50_ms": round(p50 * 1e3, 3),
            "p99_ms": round(p99 * 1e3, 3),
            "p50_ratio": round(p50 / base50, 3),
            "p99_ratio": round(p99 / base99, 3),
            "added_p50_us": round((p50 - base50) * 1e6, 1),
        }
        print(
            f"{variant:<20}{p50 * 1e3:>8.2f}{p99 * 1e3:>8.2f}{p50 / base50:>10.2f}{p99 / base99:>10.2f}"
            f"{(p50 - base50) * 1e6:>16.0f}"
        )
    report["verify_only"] = alone
    print(
        f"the verifier alone (this process): {alone['cached_p50_us']:.0f} us p50 / {alone['cached_p99_us']:.0f} us p99"
        f" cached, {alone['no-cache_p50_us']:.0f} / {alone['no-cache_p99_us']:.0f} us checking the signature"
    )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The results as rows for ``bench/summary.py`` (one shape for every benchmark)."""
    variants = report["variants"]
    open_p50 = variants["open"]["p50_ms"]
    return [
        dict(
            measure=f"MCP tool call p50, {name}",
            value=v["p50_ms"],
            unit="ms",
            baseline="open server",
            baseline_value=open_p50,
            ratio=v["p50_ratio"],
            note="lower is better",
        )
        for name, v in variants.items()
        if name != "open"
    ]


if __name__ == "__main__":
    sys.exit(main())
