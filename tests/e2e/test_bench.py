"""The benchmarks' short form, so they keep working: every benchmark runs against its
same-run baseline and reports a ratio. Figures are not asserted (speed is measured in
benchmarks, not in timed tests); that they are all there, positive, and loss-free is."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import ROOT


def test_the_short_benchmarks_run_and_report_every_ratio():
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--short"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((ROOT / "bench/results/latest.json").read_text())
    benchmarks = results["benchmarks"]
    assert set(benchmarks) >= {"accept", "fanout", "latency", "memory", "compose", "cluster"}
    accept = benchmarks["accept"]
    for store in ("memory", "sqlite", "sqlite_keyed", "alone", "alone_batch", "batch_delivery"):
        assert accept[store]["rate"] > 0 and accept[store]["non_2xx"] == 0
    # A key of its own on every request: each one stored, none answered as a repeat.
    assert accept["sqlite_keyed"]["replayed"] == 0
    for point in benchmarks["fanout"]["points"]:
        for kind in ("raw", "memory", "sqlite"):
            assert point[kind]["rate"] > 0
        assert point["memory"]["failed"] == 0
    batched = benchmarks["fanout"]["batched"]
    assert batched["batched"]["rate"] > 0 and batched["batched"]["failed"] == 0
    for point in ("batched", "sync_batches"):
        assert benchmarks["latency"][point]["broker"]["failed"] == 0
    assert benchmarks["memory"]["bytes_per_message"] > 0
    cluster = benchmarks["cluster"]
    for store in ("valkey", "sqlite"):
        assert cluster["accept"][store]["rate"] > 0 and cluster["accept"][store]["non_2xx"] == 0
        assert cluster["fanout"][store]["rate"] > 0 and cluster["fanout"][store]["failed"] == 0
        assert cluster["latency"][store]["failed"] == 0
    # Two replicas, one owning the queue, each taking its share of the publishes.
    replicas = cluster["replicas"]
    assert [role for _, role in replicas["roles"]] == ["owner", "standby"]
    for spread in ("one", "two", "second"):
        assert replicas["accept"][spread]["rate"] > 0 and replicas["accept"][spread]["non_2xx"] == 0
    assert replicas["accept"]["two"]["cost"]["second"] > 0
    assert all(replicas["fanout"][spread]["failed"] == 0 for spread in ("one", "two"))
    assert cluster["cost"]["cpu_us_per_message"]["valkey"] > 0
    assert "skipped" not in benchmarks["compose"], benchmarks["compose"]
    assert (ROOT / "bench/results/fanout.png").stat().st_size > 0
    print(done.stdout)
