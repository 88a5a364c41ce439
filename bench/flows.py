"""Flow engine throughput: decisions per second for a 10-step flow with CEL conditions, and replay
throughput over a 10,000-decision log. The baseline, measured in the same run, is the CEL floor: the
same ten conditions evaluated directly with the CEL library on one prepared activation (what the
engine cannot avoid), so the ratio shows what the engine adds around them.

    python bench/flows.py            # 20,000 decisions, 10,000-decision replay
    python bench/flows.py --quick
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tessera.federation.cel import activation, compile_expression
from tessera.workflows.engine import Recorded, evaluate
from tessera.workflows.loader import load_text
from tessera.workflows.replay import replay

CONDITIONS = [
    'client.id.startsWith("ci-")',
    '"deploy" in request.scope',
    "request.lifetime <= 3600",
    'request.audience.exists(a, a.startsWith("https://prod."))',
    "size(request.scope) < 10",
    'request.grant == "client_credentials"',
    "source.hour >= 0 && source.hour < 24",
    '!("admin" in request.scope) || source.hour >= 6',
    'client.name != "blocked"',
    "size(client.contacts) >= 0",
]
FLOW = (
    "id: ten-steps\non: token.issue\nrisk: high\nsteps:\n"
    + "".join(f"  - id: s{i}\n    require: '{c}'\n" for i, c in enumerate(CONDITIONS[:8]))
    + "  - id: s8\n    limit: {lifetime: 600}\n  - id: s9\n    when: '"
    + CONDITIONS[8]
    + "'\n    allow: {}\n"
)


def context(rng: random.Random) -> dict:
    return {
        "client": {"id": f"ci-{rng.randrange(100)}", "name": "x", "contacts": ["a@b"], "metadata": {}},
        "request": {
            "grant": "client_credentials",
            "scope": ["deploy", rng.choice(["read", "write"])],
            "audience": ["https://prod.api"],
            "lifetime": 900,
        },
        "source": {"hour": rng.randrange(6, 24)},
    }


def bench_decisions(n: int) -> dict:
    flow = load_text(FLOW, "bench.yaml")
    assert len(flow.steps) == 10
    rng = random.Random(1)
    contexts = [context(rng) for _ in range(1000)]
    # The floor: ten conditions evaluated directly on one activation per context.
    exprs = [compile_expression(c) for c in CONDITIONS]
    t = time.perf_counter()
    for i in range(n):
        ctx = contexts[i % 1000]
        act = activation(client=ctx["client"], request=ctx["request"], source=ctx["source"], federation={}, person={})
        for e in exprs:
            e.evaluate_bool(act)
    floor = n / (time.perf_counter() - t)
    t = time.perf_counter()
    outcomes = set()
    for i in range(n):
        outcomes.add(evaluate([flow], "token.issue", contexts[i % 1000], Recorded(), 0, "client_credentials").outcome)
    rate = n / (time.perf_counter() - t)
    assert outcomes == {"allow"}, outcomes
    return {"decisions_per_s": rate, "cel_floor_per_s": floor, "ratio": rate / floor}


def bench_replay(n: int) -> dict:
    flow = load_text(FLOW, "bench.yaml")
    candidate = load_text(FLOW.replace("source.hour >= 6", "source.hour >= 12"), "candidate.yaml")
    rng = random.Random(2)
    log = []
    for i in range(n):
        ctx = context(rng)
        ctx["request"]["scope"].append("admin") if rng.random() < 0.3 else None
        d = evaluate([flow], "token.issue", ctx, Recorded(), 0, "client_credentials")
        log.append(
            {
                "seq": i + 1,
                "ts": 0,
                "data": {"trigger": "token.issue", "grant": "client_credentials", **d.to_json(), "inputs": ctx},
            }
        )
    t = time.perf_counter()
    report = replay(log, [candidate])
    elapsed = time.perf_counter() - t
    return {
        "records": n,
        "records_per_s": n / elapsed,
        "seconds": elapsed,
        "changed": sum(len(v) for v in report.changes.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--output", default="bench/results/flows.json")
    args = ap.parse_args()
    n = 2000 if args.quick else 20000
    runs = [bench_decisions(n) for _ in range(args.repeat)]
    dec = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    rep = bench_replay(2000 if args.quick else 10000)
    print("| measure | value |")
    print("|---|---|")
    print(f"| 10-step flow decisions/s (median of {args.repeat}) | {dec['decisions_per_s']:,.0f} |")
    print(f"| CEL floor: the same 10 conditions, evaluated directly /s | {dec['cel_floor_per_s']:,.0f} |")
    print(f"| engine vs CEL floor | {dec['ratio']:.2f}x |")
    print(
        f"| replay: {rep['records']:,} decisions | {rep['seconds']:.2f} s = {rep['records_per_s']:,.0f} /s "
        f"({rep['changed']:,} changed) |"
    )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"decisions": dec, "replay": rep}, indent=2))


def summary_rows(report: dict) -> list[dict]:
    """The results as rows for ``bench/summary.py`` (one shape for every benchmark)."""
    d, r = report["decisions"], report["replay"]
    return [
        dict(
            measure="10-step flow decision",
            value=d["decisions_per_s"],
            unit="decisions/s",
            baseline="the 10 CEL conditions alone",
            baseline_value=d["cel_floor_per_s"],
            ratio=d["ratio"],
            note="",
        ),
        dict(
            measure=f"replay of {r['records']:,} decisions",
            value=r["records_per_s"],
            unit="decisions/s",
            baseline=None,
            baseline_value=None,
            ratio=None,
            note=f"{r['changed']:,} changed by the candidate",
        ),
    ]


if __name__ == "__main__":
    main()
