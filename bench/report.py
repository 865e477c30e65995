"""The results as a table (each figure next to its same-run baseline and their ratio), as
JSON, and the fan-out chart."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bench.common import ratio

Row = tuple[str, str, str, str, str, str]
HEADER: Row = ("benchmark", "case", "groker", "baseline", "ratio", "notes")


def _num(value: float | None, unit: str, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f} {unit}"


def _row(
    bench: str,
    case: str,
    value: float | None,
    baseline: float | None,
    unit: str,
    notes: str,
    digits: int = 0,
) -> Row:
    """One figure next to its same-run baseline, and their ratio (a figure that could not
    be measured is a dash, and so is its ratio)."""
    shown = "-" if value is None or baseline is None else f"{ratio(value, baseline):.2f}"
    return (bench, case, _num(value, unit, digits), _num(baseline, unit, digits), shown, notes)


def accept_rows(r: dict[str, Any]) -> list[Row]:
    base = r["baseline"]["rate"]
    rows = []
    for store in ("memory", "sqlite"):
        s = r[store]
        notes = (f"queue end {s['queue_end']:,} (peak {s['queue_peak']:,}); delivered "
                 f"{s['delivered_rate']:,.0f}/s meanwhile; drained in {s['drain_s']} s; "
                 f"non-2xx {s['non_2xx']}")  # fmt: skip
        rows.append(
            _row("accept", f"{store} store, async publish", s["rate"], base, "msg/s", notes)
        )
    if "alone_batch" in r:
        batched, single = r["alone_batch"], r["alone"]
        per_request = batched["rate"] / batched["batch"]
        notes = (f"POST /messages/batch of {batched['batch']} ({per_request:,.0f} requests/s), "
                 f"nobody subscribed; baseline: one message per request on the same broker "
                 f"({single['rate'] / base:.2f} of the bare route); non-2xx "
                 f"{batched['non_2xx']}")  # fmt: skip
        case = "sqlite, batches, accepting alone"
        rows.append(_row("accept", case, batched["rate"], single["rate"], "msg/s", notes))
    if "batch_delivery" in r:
        s = r["batch_delivery"]
        notes = (f"the one subscriber takes up to {s['max_batch']} messages a POST (max_batch 1: "
                 f"{r['memory']['rate'] / base:.2f}); target >= 0.7: "
                 f"{_target(s['rate'] >= 0.7 * base)}; queue end {s['queue_end']:,}; delivered "
                 f"{s['delivered_rate']:,.0f}/s meanwhile; non-2xx {s['non_2xx']}")  # fmt: skip
        case = "memory store, subscriber taking batches"
        rows.append(_row("accept", case, s["rate"], base, "msg/s", notes))
    if "sqlite_keyed" in r:
        keyed, plain = r["sqlite_keyed"], r["sqlite"]
        notes = (f"baseline: the sqlite run above, without keys; replayed {keyed['replayed']}, "
                 f"non-2xx {keyed['non_2xx']}")  # fmt: skip
        case = "sqlite, each with an Idempotency-Key"
        rows.append(_row("accept", case, keyed["rate"], plain["rate"], "msg/s", notes))
    return rows


def fanout_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    for p in r["points"]:
        raw = p["raw"]["rate"]
        for store in ("memory", "sqlite"):
            if store not in p:
                continue
            s = p[store]
            tail = _num(s.get("tail_rate"), "/s")
            notes = (f"M={s['messages']:,}, publishing took {s['publish_s']} s, {tail} after it;"
                     f" runs {s['samples']} (raw {p['raw']['samples']})")  # fmt: skip
            case = f"N={p['subscribers']} {store}"
            rows.append(_row("fan-out", case, s["rate"], raw, "dlv/s", notes))
    if "batched" in r:
        b = r["batched"]
        batched, single = b["batched"], b["single"]
        notes = (f"M={b['messages']:,} published in batches of 100 (took {batched['publish_s']} s"
                 f" / {single['publish_s']} s); baseline: the same N with max_batch 1; failed "
                 f"{batched['failed']}")  # fmt: skip
        case = f"N={b['subscribers']} sqlite, max_batch {b['max_batch']}"
        rows.append(_row("fan-out", case, batched["rate"], single["rate"], "dlv/s", notes))
    return rows


def latency_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    # (point, label, what the notes say first, messages per request)
    points = [(p, "memory", "", 1) for p in r["points"]]
    if "batched" in r:
        p = r["batched"]
        points.append((p, "batches", f"subscribers with max_batch {p['max_batch']}; ", 1))
    if "sync_batches" in r:
        p = r["sync_batches"]
        said = (f"sync POST /messages/batch of {p['batch']} ({p['rate'] // p['batch']:,} "
                f"requests/s; latency per request), subscribers with max_batch "
                f"{p['max_batch']}; ")  # fmt: skip
        points.append((p, f"published {p['batch']} a request", said, p["batch"]))
    for p, label, prefix, per_request in points:
        b, d = p["broker"], p["direct"]
        notes = (f"{prefix}achieved {b['achieved'] * per_request:,.0f} msg/s (direct "
                 f"{d['achieved']:,}/s), failed {b['failed']}, max {b['max_ms']:,} ms")  # fmt: skip
        for q in ("p50_ms", "p99_ms"):
            case = f"{p['rate']:,} msg/s sync {q[:3]}, {label}"
            rows.append(_row("latency", case, b[q], d[q], "ms", notes, digits=1))
    return rows


def memory_rows(r: dict[str, Any]) -> list[Row]:
    per, base = r["bytes_per_message"], r["baseline_bytes_per_message"]
    notes = (f"minus the {r['body_bytes']} B body: {r['overhead_per_message']:,} B; RSS "
             f"{r['rss_before_mib']} -> {r['rss_after_mib']} MiB")  # fmt: skip
    return [("memory", f"{r['messages']:,} queued", _num(per, "B/msg"), _num(base, "B/msg"),
             f"{ratio(per, base):.2f}", notes)]  # fmt: skip


def _split(by_replica: dict[str, int]) -> str:
    """{"owner": 32, "second": 64} -> "owner 32 / second 64"."""
    return " / ".join(f"{name} {n:,}" for name, n in by_replica.items())


def _lane_of(reps: dict[str, Any], point: str) -> str:
    """Which replica held the subscribers' lanes in a point of the replicas' runs."""
    held = reps.get("lanes", {}).get(point, [])
    return ", ".join(f"{held.count(name)} on {name}" for name in sorted(set(held))) or "?"


def _machine(two: dict[str, Any], one: dict[str, Any], count: str = "accepted",
             unit: str = "msg") -> str:  # fmt: skip
    """The whole machine's CPU per item in both runs (every process: the replicas, Valkey,
    the load tool, the subscribers), and the rate that would fill every core at it."""
    cores = os.cpu_count() or 1
    per = [run["cost"].get("machine", 0) / run[count] * 1e6 for run in (two, one)]
    if not all(per):
        return "machine CPU not measured"
    bound = [cores / (p / 1e6) for p in per]
    # Steal: the hypervisor ran other machines on these cores while this one waited.
    stolen = [run["cost"].get("steal", 0) / run["cost"]["wall_s"] for run in (two, one)]
    return (f"machine CPU/{unit} {per[0]:,.0f} µs (one: {per[1]:,.0f}), so {cores} cores "
            f"busy at {bound[0]:,.0f} {unit}/s (one: {bound[1]:,.0f}); cores stolen by the "
            f"hypervisor {stolen[0]:.2f} (one: {stolen[1]:.2f})")  # fmt: skip


def _target(met: bool) -> str:
    return "met" if met else "MISSED"


def cluster_rows(r: dict[str, Any]) -> list[Row]:
    acc, fan, lat, cost = r["accept"], r["fanout"], r["latency"], r["cost"]
    v, s = acc["valkey"], acc["sqlite"]
    notes = (f"target >= 0.8: {_target(v['rate'] >= 0.8 * s['rate'])}; runs {v['samples']} "
             f"(sqlite {s['samples']}); queue end {v['queue_end']:,} (peak {v['queue_peak']:,}); "
             f"delivered {v['delivered_rate']:,.0f}/s meanwhile; non-2xx "
             f"{v['non_2xx']}")  # fmt: skip
    rows = [_row("cluster", "accept, valkey, 1 replica", v["rate"], s["rate"], "msg/s", notes)]
    v, s = fan["valkey"], fan["sqlite"]
    notes = (f"target >= 0.8: {_target(v['rate'] >= 0.8 * s['rate'])}; M={fan['messages']:,}; "
             f"runs {v['samples']} (sqlite {s['samples']}); failed {v['failed']}")  # fmt: skip
    case = f"fan-out N={fan['subscribers']}, valkey"
    rows.append(_row("cluster", case, v["rate"], s["rate"], "dlv/s", notes))
    v, s = lat["valkey"], lat["sqlite"]
    over = v["p50_ms"] - s["p50_ms"]
    notes = (f"p50 {over:+.1f} ms over sqlite (target <= +1 ms: {_target(over <= 1)}); "
             f"{lat['subscribers']} subscribers; achieved {v['achieved']:,}/s, failed "
             f"{v['failed']}, max {v['max_ms']:,} ms")  # fmt: skip
    for q in ("p50_ms", "p99_ms"):
        case = f"{lat['rate']:,} msg/s sync {q[:3]}, valkey"
        rows.append(_row("cluster", case, v[q], s[q], "ms", notes, digits=1))
    reps = r["replicas"]
    one, two, via = reps["accept"]["one"], reps["accept"]["two"], reps["accept"]["second"]
    notes = (f"target >= 1.3: {_target(two['rate'] >= 1.3 * one['rate'])}; "
             f"connections {_split(two['connections'])}, set from the warm-ups to even the "
             f"requests out as the load balancer's round robin does; they took "
             f"{_split(two['requests_each'])} (one: "
             f"{one['connections']['owner']} connections); the one "
             f"subscriber's lane on {_lane_of(reps, 'accept')}; runs {two['samples']} (one "
             f"{one['samples']}); CPU s over the run: owner {two['cost']['broker']}, second "
             f"{two['cost']['second']}, valkey {two['cost']['valkey']} (one replica: "
             f"{one['cost']['broker']}, {one['cost']['valkey']}); {_machine(two, one)}; "
             f"non-2xx {two['non_2xx']}")  # fmt: skip
    case = "accept, 2 replicas vs 1"
    rows.append(_row("cluster", case, two["rate"], one["rate"], "msg/s", notes))
    notes = (f"every publish to the second replica, the owner sequencing, the second "
             f"delivering; runs {via['samples']}; non-2xx {via['non_2xx']}")  # fmt: skip
    case = "accept, all through the 2nd replica"
    rows.append(_row("cluster", case, via["rate"], one["rate"], "msg/s", notes))
    f1, f2 = reps["fanout"]["one"], reps["fanout"]["two"]
    notes = (f"target >= 1.3: {_target(f2['rate'] >= 1.3 * f1['rate'])}; messages "
             f"asked of each {_split(f2['split'])}; lanes {_lane_of(reps, 'two')}; "
             f"M={f2['messages']:,}; "
             f"runs {f2['samples']} (one {f1['samples']}); "
             f"{_machine(f2, f1, 'deliveries', 'dlv')}; failed {f2['failed']}")  # fmt: skip
    case = f"fan-out N={reps['subscribers']}, 2 replicas vs 1"
    rows.append(_row("cluster", case, f2["rate"], f1["rate"], "dlv/s", notes))
    owner = cost["owner_cpu_us_per_message"]
    notes = (f"the owner's worker, the message published through the second replica "
             f"(intake; the second delivers) against one published to it and delivered; "
             f"the second replica's "
             f"worker: {owner['that_replica']:,} µs/message")  # fmt: skip
    case = "CPU/message, owner, via a replica"
    rows.append(_row("cluster", case, owner["through_another_replica"], owner["own_publish"],
                     "µs", notes))  # fmt: skip
    bound = cost["owner_bound_msg_s"]
    notes = (f"a core each, on machines of their own: the owner's core with every publish "
             f"taken by the others, against the owner alone; it takes "
             f"{_num(cost['replicas_to_owner_bound'], 'replicas', 1)} besides the owner to "
             f"feed it; CPU only")  # fmt: skip
    case = "owner core, fed by replicas, projected"
    rows.append(_row("cluster", case, bound["fed"], bound["alone"], "msg/s", notes))
    per_message, per_delivery = cost["cpu_us_per_message"], cost["cpu_us_per_delivery"]
    busy = cost["cores_busy"]
    notes = (f"the worker over the accept run (each message stored, published, delivered once)"
             f", {busy['broker']} cores busy; baseline: the same on SQLite")  # fmt: skip
    sqlite_broker = cost["sqlite_broker_cpu_us_per_message"]
    case = "CPU/message, broker, valkey"
    rows.append(_row("cluster", case, per_message["broker"], sqlite_broker, "µs", notes))
    notes = (f"{cost['valkey_commands_per_message']} commands/message in "
             f"{cost['valkey_scripts_per_message']} scripts (group commit), {busy['valkey']} "
             f"cores busy; baseline: the broker's CPU/message above")  # fmt: skip
    case = "CPU/message, valkey-server"
    rows.append(_row("cluster", case, per_message["valkey"], per_message["broker"], "µs", notes))
    notes = "the fan-out run, accepting included; baseline: the broker's CPU/delivery"
    case = f"CPU/dlv N={fan['subscribers']}, valkey-server"
    valkey, broker = per_delivery["valkey"], per_delivery["broker"]
    rows.append(_row("cluster", case, valkey, broker, "µs", notes, digits=1))
    as_measured = cost["replicas_to_ceiling_as_measured"]
    notes = (f"ratio = replicas (a core each) taking publishes it would take; "
             f"{_num(as_measured, 'replicas', 1)} at the rate measured here; at N="
             f"{fan['subscribers']}: {_num(cost['valkey_ceiling_dlv_s'], 'dlv/s')}, "
             f"{_num(cost['replicas_to_delivery_ceiling'], 'replicas', 1)}; CPU only")  # fmt: skip
    ceiling, replica = cost["valkey_ceiling_msg_s"], cost["replica_msg_s_per_core"]
    rows.append(_row("cluster", "one Valkey core, projected", ceiling, replica, "msg/s", notes))
    return rows


def compose_rows(r: dict[str, Any]) -> list[Row]:
    if "skipped" in r:
        return [("compose", "-", "-", "-", "-", f"skipped: {r['skipped']}")]
    a, native, loop = r["accept"], r["native"], r["python_loop_s"]
    notes = (f"queue end {a['queue_end']:,} (peak {a['queue_peak']:,}); delivered "
             f"{a['delivered_rate']:,.0f}/s meanwhile; compose up took {r['up_s']} s")  # fmt: skip
    rows = [("compose", "pure-Python loop (interpreter)", _num(loop["container"], "s", 3),
             _num(loop["native"], "s", 3), f"{ratio(loop['container'], loop['native']):.2f}",
             "the images' python3.11 against this venv's: lower is faster"),
            ("compose", "accept, sqlite", _num(a["rate"], "msg/s"),
             _num(native["accept"], "msg/s"), f"{ratio(a['rate'], native['accept']):.2f}",
             notes)]  # fmt: skip
    for p in r["fanout"]:
        base = native["fanout"].get(p["subscribers"]) or native["fanout"].get(str(p["subscribers"]))
        tail = _num(p.get("tail_rate"), "/s")
        rows.append(("compose", f"fan-out N={p['subscribers']} sqlite", _num(p["rate"], "dlv/s"),
                     _num(base, "dlv/s"), f"{ratio(p['rate'], base or 0):.2f}",
                     f"M={p['messages']:,}, {tail} after publishing"))  # fmt: skip
    return rows


ROWS = {"accept": accept_rows, "fanout": fanout_rows, "latency": latency_rows,
        "memory": memory_rows, "cluster": cluster_rows, "compose": compose_rows}  # fmt: skip
BASELINES = {
    "accept": "bare Flask POST -> 202 JSON, same gunicorn settings (1 gevent worker)",
    "fanout": "raw limit: HttpPool (broker's client) posting the same payloads, 1 greenlet/sink",
    "latency": "direct POST round-trip to one subscriber, same client library, same pacing",
    "memory": "(uuid, seq, body JSON) tuples in a deque, bare Python process",
    "cluster": "the same broker on SQLite (2 replicas: 1 replica; CPU rows: see notes)",
    "compose": "the same benchmark natively in this run (ratio = docker / native)",
}


def table(results: dict[str, Any]) -> str:
    rows: list[Row] = [HEADER]
    for name, make in ROWS.items():
        got = results["benchmarks"].get(name)
        if got is None:
            continue
        if "error" in got:
            rows.append((name, "-", "-", "-", "-", f"FAILED: {got['error']}"))
            continue
        rows.extend(make(got))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)), row[5]])
             for row in rows]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    lines.append("ratio = groker / baseline (throughput: higher is better; latency, memory: lower)")
    for name, what in BASELINES.items():
        if name in results["benchmarks"]:
            lines.append(f"  {name} baseline: {what}")
    return "\n".join(lines)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")


def chart(results: dict[str, Any], path: Path) -> None:
    """Deliveries/s against subscribers: the broker (each store, and compose) and raw."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    points = results["benchmarks"]["fanout"]["points"]
    xs = [p["subscribers"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    series = [
        ("raw", "k--o", "raw limit (HttpPool, no broker)"),
        ("memory", "-o", "groker, memory store"),
        ("sqlite", "-s", "groker, sqlite store"),
    ]
    for key, style, label in series:  # fmt: skip
        if not all(key in p for p in points):
            continue
        ys = [p[key]["rate"] for p in points]
        # Bars: the lowest and highest of the repeated runs around the median.
        runs = [p[key].get("samples", [y]) for y, p in zip(ys, points, strict=True)]
        low = [max(0.0, y - min(r)) for y, r in zip(ys, runs, strict=True)]
        high = [max(0.0, max(r) - y) for y, r in zip(ys, runs, strict=True)]
        ax.errorbar(xs, ys, yerr=[low, high], fmt=style, capsize=3, label=label)
    compose = results["benchmarks"].get("compose", {})
    if compose.get("fanout"):
        cx, cy = zip(*((p["subscribers"], p["rate"]) for p in compose["fanout"]), strict=True)
        ax.errorbar(cx, cy, fmt="-^", label="groker in compose (sqlite)")
    ax.set_xscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("subscribers")
    ax.set_ylabel("deliveries / s")
    meta = results["meta"]
    ax.set_title(f"groker fan-out ({meta['git']}, {meta['cpus']} CPUs"
                 f"{', short' if meta['short'] else ''})")  # fmt: skip
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
