"""Authorization code benchmark: what the agent waits for once the person has consented.

One ``tessera serve`` (SQLite, the default) and this process as agent and browser, one keep-alive
connection each, one request at a time, in the same run:

- **baseline**: ``client_credentials`` token requests (``client_secret_basic``);
- **code cycle**: a remembered consent — ``GET /oauth/authorize`` (signed-in session: a code comes
  straight back) then ``POST /oauth/token`` with ``grant_type=authorization_code`` and the PKCE
  verifier; the latency of the pair and of the redemption alone;
- **refresh**: ``grant_type=refresh_token`` with rotation, each request using the token the previous
  one returned (so every request writes: the old token used, a new one and an access token stored).

p50/p99 in milliseconds, and the ratio to the baseline's p50. The person signs in once with a
software passkey (``tests/webauthn_support.py``) through the same pages a browser uses.

    python bench/authcode.py            # 500 requests of each kind
    python bench/authcode.py --quick    # 100

Results go to ``bench/results/authcode.json`` (not committed). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402

from approval_support import approval_server  # noqa: E402
from authcode_support import World, pkce, query_of  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 2),
        "p99_ms": round(pct(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "authcode.json"))
    args = parser.parse_args()
    n = 100 if args.quick else args.requests
    data = pathlib.Path(tempfile.mkdtemp(prefix="tessera-bench-authcode-")) / "data"
    srv = approval_server(data).start()
    try:
        w = World(srv)
        person = w.person("alice")
        agent = w.agent()
        code, verifier, _ = w.code_for(person, agent)  # signs in and consents once
        tokens = w.redeem(agent, code, verifier).json()
        cc = srv.register(scope="read")
        results: dict[str, Any] = {}
        with httpx.Client(timeout=15) as http:
            base: list[float] = []
            for _ in range(n):
                t = time.perf_counter()
                r = http.post(
                    srv.token_endpoint,
                    data={"grant_type": "client_credentials"},
                    auth=(cc["client_id"], cc["client_secret"]),
                )
                base.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text
            results["client_credentials"] = summary(base)

            cycle: list[float] = []
            redeem: list[float] = []
            for _ in range(n):
                v, challenge = pkce()
                t = time.perf_counter()
                r = person.page.get(w.authorize_url(agent, challenge))
                assert r.status_code == 303, r.text
                c = query_of(r.headers["location"])["code"]
                t1 = time.perf_counter()
                r = http.post(
                    srv.token_endpoint,
                    data={
                        "grant_type": "authorization_code",
                        "code": c,
                        "code_verifier": v,
                        "redirect_uri": agent.redirect_uri,
                        "client_id": agent.client_id,
                    },
                )
                t2 = time.perf_counter()
                assert r.status_code == 200, r.text
                cycle.append((t2 - t) * 1000)
                redeem.append((t2 - t1) * 1000)
            results["code_cycle"] = summary(cycle)
            results["code_redemption"] = summary(redeem)

            refresh: list[float] = []
            rt = tokens["refresh_token"]
            for _ in range(n):
                t = time.perf_counter()
                r = http.post(
                    srv.token_endpoint,
                    data={"grant_type": "refresh_token", "refresh_token": rt, "client_id": agent.client_id},
                )
                refresh.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text
                rt = r.json()["refresh_token"]
            results["refresh_rotation"] = summary(refresh)
        p50 = results["client_credentials"]["p50_ms"]
        for k in ("code_cycle", "code_redemption", "refresh_rotation"):
            results[k]["vs_client_credentials_p50"] = round(results[k]["p50_ms"] / p50, 2)
    finally:
        srv.stop()
    out = pathlib.Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'':22} {'p50 ms':>8} {'p99 ms':>8} {'x cc p50':>9}")
    for k, v in results.items():
        print(f"{k:22} {v['p50_ms']:8.2f} {v['p99_ms']:8.2f} {v.get('vs_client_credentials_p50', 1.0):9.2f}")


if __name__ == "__main__":
    main()
