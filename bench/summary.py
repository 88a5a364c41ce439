"""Run every benchmark and write one table of their ratios against their in-run baselines.

    python bench/summary.py            # every benchmark with its own defaults (tens of minutes)
    python bench/summary.py --quick    # short runs: a few minutes on 2 cores
    python bench/summary.py --only issuer,flows --readme

Each benchmark (``issuer.py``, ``exchange.py``, ``verify.py``, ``ciba.py``, ``flows.py``, ``mcp.py``; ``floor.py``
is the crypto floor that ``issuer.py`` and ``exchange.py`` measure in their own runs) runs as its own
process, one after the other (they pin the server and the load to CPUs 0 and 1), writes its JSON
to ``bench/results/``, and its ``summary_rows(report)`` turns that JSON into rows of one shape:
measure, value, unit, baseline, baseline value, ratio, note. The table is printed and written to
``bench/results/summary.md`` (and ``summary.json``); ``--readme`` puts it into README.md between
the ``bench:summary`` markers. A benchmark that fails is a row saying so; the others still run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
README = ROOT / "README.md"
START, END = "<!-- bench:summary:start -->", "<!-- bench:summary:end -->"

# name -> (arguments for a full run, arguments for --quick). Every run writes bench/results/<name>.json.
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "issuer": ([], ["--duration", "4", "--warmup", "1", "--floor-seconds", "1"]),
    "exchange": ([], ["--duration", "4", "--warmup", "1", "--floor-seconds", "1"]),
    "verify": ([], ["-n", "800"]),
    "ciba": ([], ["--quick"]),
    "flows": ([], ["--quick", "--repeat", "1"]),
    "mcp": ([], ["--quick"]),
}


def _peer_ready() -> bool:
    """node-oidc-provider is compared against only where Node.js and its modules are already there
    in --quick mode (installing them is not quick)."""
    return shutil.which("node") is not None and (BENCH_DIR / "peer" / "node_modules").is_dir()


def run(name: str, quick: bool, timeout: float) -> tuple[list[dict[str, Any]], str]:
    full, short = BENCHMARKS[name]
    args = list(short if quick else full)
    if name == "issuer" and quick and not _peer_ready():
        args += ["--only", "tessera"]
    output = RESULTS / f"{name}.json"
    output.unlink(missing_ok=True)
    argv = [sys.executable, str(BENCH_DIR / f"{name}.py"), *args, "--output", str(output)]
    print(f"[summary] {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=ROOT, timeout=timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return [], f"did not finish within {timeout:.0f} s"
    (RESULTS / f"{name}.log").write_text(proc.stdout + proc.stderr)
    took = time.monotonic() - started
    if proc.returncode != 0 or not output.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return [], f"failed (exit {proc.returncode}): {tail[0][:160]}"
    module = importlib.import_module(name)
    rows = module.summary_rows(json.loads(output.read_text()))
    return rows, f"{took:.0f} s"


def collect(name: str) -> tuple[list[dict[str, Any]], str]:
    output = RESULTS / f"{name}.json"
    if not output.exists():
        return [], f"no results ({output.name})"
    return importlib.import_module(name).summary_rows(json.loads(output.read_text())), "from results"


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def table(results: dict[str, tuple[list[dict[str, Any]], str]], quick: bool) -> str:
    lines = [
        f"Benchmarks ({'--quick' if quick else 'full'} run, {time.strftime('%Y-%m-%d', time.gmtime())}, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        "one server process on CPU 0, load on CPU 1). Ratio = value / baseline, both measured in the same run.",
        "",
        "| benchmark | measure | value | baseline | baseline value | ratio | note |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for name, (rows, status) in results.items():
        if not rows:
            lines.append(f"| {name} | - | - | - | - | - | {status} |")
        for r in rows:
            unit = r["unit"]
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            base_unit = r.get("baseline_unit", unit)
            base = f"{_num(r['baseline_value'])} {base_unit}" if r["baseline_value"] is not None else "-"
            lines.append(
                f"| {name} | {r['measure']} | {_num(r['value'])} {unit} | {r['baseline'] or '-'} | {base} "
                f"| {ratio} | {r['note']} |"
            )
    return "\n".join(lines) + "\n"


def put_in_readme(text: str) -> None:
    readme = README.read_text()
    if START not in readme or END not in readme:
        raise SystemExit(f"README.md has no {START} ... {END} markers")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    note = "<!-- generated by `make bench` (bench/summary.py --readme); do not edit by hand -->\n"
    README.write_text(f"{head}{START}\n{note}{text}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs of every benchmark (a few minutes)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--readme", action="store_true", help="also put the table into README.md")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per benchmark")
    parser.add_argument(
        "--from-results", action="store_true", help="run nothing: the table from the JSON in bench/results/"
    )
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(BENCH_DIR))
    if args.from_results:
        results = {name: collect(name) for name in names}
    else:
        results = {name: run(name, args.quick, args.timeout) for name in names}
    text = table(results, args.quick)
    (RESULTS / "summary.md").write_text(text)
    (RESULTS / "summary.json").write_text(
        json.dumps({name: {"rows": rows, "status": status} for name, (rows, status) in results.items()}, indent=2)
    )
    print(text)
    if args.readme:
        put_in_readme(text)
    return 0 if all(rows for rows, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
