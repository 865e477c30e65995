"""Property tests of the core (hypothesis): for any interleaving of subscribe, unsubscribe,
publish and subscribers failing or recovering, the broker keeps its promises. Real HTTP to a
real receiver on loopback; every example gets a fresh broker, or, for "valkey-pair", two
replicas on one Valkey (cluster_pair.py), each publish taken by the one hypothesis picks."""

from __future__ import annotations

import contextlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.acceptor import Acceptor
from broker.core import Broker
from broker.errors import KeyInUse, KeyReused
from broker.settings import BrokerSettings
from broker.wiring import build_broker
from groker_common.testing import serve, wait_until
from groker_common.webhooks import challenge_echo

from .cluster_pair import ClusterPair
from .conftest import fresh_durable_settings, settings_for_tests

# What takes a publish: a broker, or a standby replica's acceptor (the same methods).
Publisher = Broker | Acceptor

SUBSCRIBERS = 3
step = st.one_of(
    st.tuples(st.just("subscribe"), st.integers(0, SUBSCRIBERS - 1)),
    st.tuples(st.just("unsubscribe"), st.integers(0, SUBSCRIBERS - 1)),
    st.tuples(st.just("publish"), st.sampled_from(["sync", "async"])),
    st.tuples(st.just("batch"), st.integers(1, 3)),
    st.tuples(st.just("fail"), st.integers(0, SUBSCRIBERS - 1)),
    st.tuples(st.just("recover"), st.integers(0, SUBSCRIBERS - 1)),
    st.tuples(st.just("pause"), st.just(0)),
)


class Receiver:
    """One loopback server for every callback of an example: /hook/<i>/<k> is subscriber i's
    k-th subscription, /notify the publisher's callback. Subscriber i can be told to fail."""

    def __init__(self) -> None:
        self.received: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.notified: Counter[str] = Counter()
        self.failing: set[int] = set()
        self.server, self.url = serve(self)

    def __call__(self, environ, start_response):
        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        path = environ["PATH_INFO"]
        challenge = challenge_echo(raw)
        if challenge is not None:
            start_response("200 OK", [("Content-Type", "application/json")])
            return [challenge]
        if path == "/notify":
            self.notified[json.loads(raw)["id"]] += 1
        elif int(path.split("/")[2]) in self.failing:
            start_response("500 Failing", [])
            return [b""]
        else:
            delivery = json.loads(raw)
            # Subscriber 2 takes batches: arrays, flattened here in the order they came.
            batch = delivery if isinstance(delivery, list) else [delivery]
            self.received[path].extend(batch)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]


class Alone:
    """One broker over its store: it takes every publish; a restart builds the next one."""

    def __init__(self, settings_: BrokerSettings) -> None:
        self.settings = settings_
        self.broker = build_broker(settings_)
        self.broker.start()

    def restart_owner(self) -> None:
        self.broker.stop()
        self.broker = build_broker(self.settings)
        self.broker.start()

    def close(self) -> None:
        self.broker.stop()


# Every store the properties hold over; "valkey-pair": two replicas on one Valkey.
STORES = ["memory", "sqlite", "valkey", "valkey-pair"]


@pytest.fixture
def closing() -> Iterator[list[gevent.Greenlet]]:
    """What the examples of a test left closing (cluster_pair.py), all closed by its end."""
    greenlets: list[gevent.Greenlet] = []
    yield greenlets
    gevent.joinall(greenlets, raise_error=True)


@contextlib.contextmanager
def deployed(
    request: pytest.FixtureRequest,
    store: str,
    closing: list[gevent.Greenlet],
    **options: Any,
) -> Iterator[Alone | ClusterPair]:
    """The replicas of one queue over an empty store of the kind named, running; stopped
    on the way out."""
    if store == "memory":
        stored = contextlib.nullcontext(settings_for_tests(**options))
    else:
        stored = fresh_durable_settings(request, store.removesuffix("-pair"), **options)
    with stored as settings_:
        if store == "valkey-pair":
            replicas: Alone | ClusterPair = ClusterPair(settings_, closing)
        else:
            replicas = Alone(settings_)
        try:
            yield replicas
        finally:
            replicas.close()


def taker(replicas: Alone | ClusterPair, data: st.DataObject) -> Callable[[], Publisher]:
    """Who takes the next publish: the one broker, or the replica hypothesis picks."""
    if isinstance(replicas, Alone):
        return lambda: replicas.broker

    def pick() -> Publisher:
        standby = data.draw(st.booleans(), label="through the standby")
        return replicas.standby if standby else replicas.broker

    return pick


@pytest.mark.parametrize("store", STORES)
@given(steps=st.lists(step, max_size=25), data=st.data())
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_interleaving_keeps_the_promises(store, request, closing, steps, data):
    """The same promises whatever keeps the queue, and whichever replica takes a publish:
    each example on an empty store."""
    receiver = Receiver()
    try:
        options = {"delivery_timeout": 0.5, "sync_timeout": 30}
        with deployed(request, store, closing, **options) as replicas:
            run(replicas.broker, receiver, steps, taker(replicas, data))
    finally:
        receiver.server.stop(timeout=0)


def run(
    broker: Broker,
    receiver: Receiver,
    steps: list[tuple[str, Any]],
    publisher: Callable[[], Publisher],
) -> None:
    """Play the steps: subscriptions on `broker` (the owner), each publish on `publisher()`."""
    active: dict[int, str] = {}  # subscriber -> subscription id
    created: dict[str, float] = {}  # callback path -> when that subscription was created
    generation: Counter[int] = Counter()
    sync_waiters, async_ids = [], []
    for action, arg in steps:
        if action == "subscribe" and arg not in active:
            generation[arg] += 1
            path = f"/hook/{arg}/{generation[arg]}"
            batching = {"max_batch": 3} if arg == 2 else {}
            subscription, _ = broker.subscribe(receiver.url + path, **batching)
            active[arg] = subscription.id
            created[path] = subscription.created_at
        elif action == "unsubscribe" and arg in active:
            broker.unsubscribe(active.pop(arg))
        elif action == "publish":
            taking = publisher()
            if arg == "sync":
                message, _ = taking.publish_once(None, {"step": len(sync_waiters)}, mode="sync")
                sync_waiters.append(gevent.spawn(taking.wait_published, message))
            else:
                message, _ = taking.publish_once(None, "a", callback=receiver.url + "/notify")
                async_ids.append(message.id)
        elif action == "batch":
            messages, _ = publisher().publish_batch(
                [("b", None)] * arg, callback=receiver.url + "/notify"
            )
            async_ids.extend(m.id for m in messages)
        elif action == "fail":
            receiver.failing.add(arg)
        elif action == "recover":
            receiver.failing.discard(arg)
        elif action == "pause":
            gevent.sleep(0.01)
    # A healthy late subscriber makes sure everything queued gets published in the end.
    broker.subscribe(receiver.url + "/hook/9/1")
    created["/hook/9/1"] = broker.registry.find(receiver.url + "/hook/9/1").created_at
    wait_until(lambda: broker.store.unpublished() == 0, timeout=20, what="everything published")

    for path, messages in receiver.received.items():
        seqs = [m["seq"] for m in messages]
        assert seqs == sorted(set(seqs)), f"{path} got {seqs}: not strictly increasing"
        assert all(m["published_at"] >= created[path] for m in messages), (
            f"{path} got a message published before it subscribed"
        )
    # Every sync publisher is answered once, as published; every async one notified once.
    assert [w.get(timeout=10) for w in sync_waiters] == ["published"] * len(sync_waiters)
    wait_until(lambda: len(receiver.notified) == len(async_ids), what="every notification")
    assert receiver.notified == Counter(dict.fromkeys(async_ids, 1))


KEYS = 4
keyed_step = st.one_of(
    st.tuples(st.just("publish"), st.integers(0, KEYS - 1)),
    st.tuples(st.just("retry"), st.integers(0, KEYS - 1)),
    st.tuples(st.just("conflict"), st.integers(0, KEYS - 1)),
    st.tuples(st.just("crash"), st.just(0)),
    st.tuples(st.just("pause"), st.just(0)),
)


@pytest.mark.parametrize("store", [s for s in STORES if s != "memory"])
@given(steps=st.lists(keyed_step, max_size=20), data=st.data())
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_interleaving_of_keyed_publishes_retries_and_restarts_makes_one_message_per_key(
    store, request, closing, steps, data
):
    """Publishes with idempotency keys, their retries (concurrent ones too: a retry may
    come while the first is still being written), the same key with another body, and
    restarts of the broker on its durable store (of the owner, the standby staying): one
    message per key, whatever the order and whichever replica a publish went through."""
    receiver = Receiver()
    try:
        with deployed(request, store, closing) as replicas:
            replicas.broker.subscribe(receiver.url + "/hook/0/1")
            run_keyed(replicas, steps, taker(replicas, data))
            broker = replicas.broker
            wait_until(lambda: broker.store.unpublished() == 0, what="everything published")
            ids = {m["body"]["key"]: m["id"] for m in receiver.received["/hook/0/1"]}
            per_key = defaultdict(set)
            for m in receiver.received["/hook/0/1"]:
                per_key[m["body"]["key"]].add(m["id"])
            # Delivered at least once (a restart may repeat one), but one message per key.
            assert all(len(got) == 1 for got in per_key.values()), per_key
            assert set(ids) == {k for action, k in steps if action == "publish"}
    finally:
        receiver.server.stop(timeout=0)


def run_keyed(
    replicas: Alone | ClusterPair,
    steps: list[tuple[str, int]],
    publisher: Callable[[], Publisher],
) -> None:
    """Play the steps, each publish on `publisher()`; a crash restarts the owner."""
    first: dict[int, str] = {}  # key -> the id its first accepted publish got
    retries: list[tuple[int, gevent.Greenlet]] = []

    def check_retries() -> None:
        for k, retry in retries:
            retry.join()
            if isinstance(retry.exception, KeyInUse):
                continue  # asked while the first was being written: asked again below
            message, replayed = retry.get()
            assert replayed and message.id == first[k]
        retries.clear()

    try:
        for action, k in steps:
            key = f"key-{k}"
            if action == "publish" and k not in first:
                message, replayed = publisher().publish_once(key, {"key": k})
                assert not replayed
                first[k] = message.id
            elif action in ("publish", "retry") and k in first:
                # Concurrently: the retry may find its first still being written.
                retries.append((k, gevent.spawn(publisher().publish_once, key, {"key": k})))
            elif action == "conflict" and k in first:
                check_retries()
                with pytest.raises(KeyReused):
                    publisher().publish_once(key, {"key": k, "other": True})
            elif action == "crash":
                check_retries()
                replicas.restart_owner()
            elif action == "pause":
                gevent.sleep(0.01)
        check_retries()
    finally:
        gevent.killall([retry for _, retry in retries])  # left by a failed example
    for k, message_id in first.items():
        assert publisher().publish_once(f"key-{k}", {"key": k})[0].id == message_id
