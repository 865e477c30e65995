"""Property tests of the core (hypothesis): for any interleaving of subscribe, unsubscribe,
publish and subscribers failing or recovering, the broker keeps its promises. Real HTTP to a
real receiver on loopback; every example gets a fresh broker."""

from __future__ import annotations

import contextlib
import json
from collections import Counter, defaultdict
from typing import Any

import gevent
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.core import Broker
from broker.errors import KeyInUse, KeyReused
from broker.wiring import build_broker
from groker_common.testing import serve, wait_until
from groker_common.webhooks import challenge_echo

from .conftest import fresh_durable_settings, settings_for_tests

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


@pytest.mark.parametrize("store", ["memory", "sqlite", "valkey"])
@given(steps=st.lists(step, max_size=25))
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_interleaving_keeps_the_promises(store, request, steps):
    """The same promises whatever keeps the queue: each example on an empty store."""
    receiver = Receiver()
    options = {"delivery_timeout": 0.5, "sync_timeout": 30}
    if store == "memory":
        stored = contextlib.nullcontext(settings_for_tests(**options))
    else:
        stored = fresh_durable_settings(request, store, **options)
    with stored as settings_:
        broker = build_broker(settings_)
        broker.start()
        try:
            run(broker, receiver, steps)
        finally:
            broker.stop()
            receiver.server.stop(timeout=0)


def run(broker: Broker, receiver: Receiver, steps: list[tuple[str, Any]]) -> None:
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
            if arg == "sync":
                message = broker.publish({"step": len(sync_waiters)}, mode="sync")
                sync_waiters.append(gevent.spawn(broker.wait_published, message))
            else:
                message = broker.publish("a", callback=receiver.url + "/notify")
                async_ids.append(message.id)
        elif action == "batch":
            messages, _ = broker.publish_batch(
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


@pytest.mark.parametrize("store", ["sqlite", "valkey"])
@given(steps=st.lists(keyed_step, max_size=20))
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_interleaving_of_keyed_publishes_retries_and_restarts_makes_one_message_per_key(
    store, request, steps
):
    """Publishes with idempotency keys, their retries (concurrent ones too: a retry may
    come while the first is still being written), the same key with another body, and
    restarts of the broker on its durable store: one message per key, whatever the order."""
    receiver = Receiver()
    with fresh_durable_settings(request, store) as settings_:
        broker = build_broker(settings_)
        broker.start()
        broker.subscribe(receiver.url + "/hook/0/1")
        try:
            broker = run_keyed(broker, settings_, steps)
            wait_until(lambda: broker.store.unpublished() == 0, what="everything published")
            ids = {m["body"]["key"]: m["id"] for m in receiver.received["/hook/0/1"]}
            per_key = defaultdict(set)
            for m in receiver.received["/hook/0/1"]:
                per_key[m["body"]["key"]].add(m["id"])
            # Delivered at least once (a restart may repeat one), but one message per key.
            assert all(len(got) == 1 for got in per_key.values()), per_key
            assert set(ids) == {k for action, k in steps if action == "publish"}
        finally:
            broker.stop()
            receiver.server.stop(timeout=0)


def run_keyed(broker: Broker, settings_: Any, steps: list[tuple[str, int]]) -> Broker:
    """Play the steps; returns the broker running at the end (restarts replace it)."""
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

    for action, k in steps:
        key = f"key-{k}"
        if action == "publish" and k not in first:
            message, replayed = broker.publish_once(key, {"key": k})
            assert not replayed
            first[k] = message.id
        elif action in ("publish", "retry") and k in first:
            # Concurrently: the retry may find its first still being written.
            retries.append((k, gevent.spawn(broker.publish_once, key, {"key": k})))
        elif action == "conflict" and k in first:
            check_retries()
            with pytest.raises(KeyReused):
                broker.publish_once(key, {"key": k, "other": True})
        elif action == "crash":
            check_retries()
            broker.stop()
            broker = build_broker(settings_)
            broker.start()
        elif action == "pause":
            gevent.sleep(0.01)
    check_retries()
    for k, message_id in first.items():
        assert broker.publish_once(f"key-{k}", {"key": k})[0].id == message_id
    return broker
