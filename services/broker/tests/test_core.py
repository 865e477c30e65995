"""The broker core, driven directly, delivering over real HTTP to loopback sinks."""

from __future__ import annotations

import gevent
import gevent.event
import pytest

from broker.core import Broker
from broker.errors import QueueFull
from broker.replies import SyncReply
from broker.schemas import MessageStatus
from broker.wiring import build_broker
from groker_common.testing import wait_until

from .conftest import settings_for_tests


def published(broker: Broker, message_id: str) -> bool:
    message = broker.message(message_id)
    return message is not None and message.status == "published"


def test_every_subscriber_receives_every_message_in_seq_order(broker, make_sink):
    sinks = [make_sink() for _ in range(3)]
    for sink in sinks:
        broker.subscribe(sink.url)
    messages = [broker.publish({"n": n}, mode="sync" if n % 3 == 0 else "async") for n in range(60)]
    assert [m.seq for m in messages] == list(range(1, 61))
    wait_until(lambda: all(len(s.received) == 60 for s in sinks), what="60 deliveries each")
    for sink in sinks:
        assert sink.seqs == list(range(1, 61))
        assert [m["body"]["n"] for m in sink.received] == list(range(60))
    wait_until(lambda: all(published(broker, m.id) for m in messages), what="publication")
    assert broker.stats().as_dict()["published"] == 60


def test_messages_wait_in_order_until_a_subscriber_joins(broker, make_sink):
    messages = [broker.publish(n) for n in range(5)]
    gevent.sleep(0.1)
    assert broker.stats().as_dict()["queue_length"] == 5
    assert all(broker.message(m.id).status == "queued" for m in messages)
    sink = make_sink()
    broker.subscribe(sink.url)
    wait_until(lambda: len(sink.received) == 5, what="the held messages")
    assert sink.seqs == [1, 2, 3, 4, 5]
    wait_until(lambda: all(published(broker, m.id) for m in messages), what="publication")


def test_a_new_subscriber_gets_nothing_published_before_it_joined(broker, make_sink):
    early, late = make_sink(), make_sink()
    broker.subscribe(early.url)
    before = [broker.publish(n) for n in range(5)]
    wait_until(lambda: all(published(broker, m.id) for m in before), what="first five")
    broker.subscribe(late.url)
    after = [broker.publish(n) for n in range(5, 10)]
    wait_until(lambda: len(late.received) == 5 and len(early.received) == 10, what="deliveries")
    assert late.seqs == [m.seq for m in after]
    assert early.seqs == list(range(1, 11))
    assert broker.message(after[0].id).delivered == 2
    assert broker.message(before[0].id).delivered == 1


def test_same_callback_is_the_same_subscription(broker, make_sink):
    sink = make_sink()
    first, created = broker.subscribe(sink.url)
    again, created_again = broker.subscribe(sink.url)
    assert (created, created_again) == (True, False)
    assert again.id == first.id
    assert len(broker.registry) == 1


@pytest.mark.parametrize("status", [500, 503])
def test_subscriber_answering_5xx_is_removed_after_its_attempts(broker, make_sink, status):
    bad, good = make_sink(status=status), make_sink()
    broker.subscribe(bad.url)
    broker.subscribe(good.url)
    message = broker.publish("x")
    wait_until(lambda: published(broker, message.id), what="publication")
    assert bad.hits == broker.settings.delivery_attempts
    assert [lane.subscriber.callback for lane in broker.registry.lanes()] == [good.url]
    assert (message.delivered, message.failed) == (1, 1)
    assert broker.stats().as_dict()["removed"] == 1


def test_subscriber_answering_410_is_removed_at_once(broker, make_sink):
    gone = make_sink(status=410)
    broker.subscribe(gone.url)
    message = broker.publish("x")
    wait_until(lambda: published(broker, message.id), what="publication")
    assert gone.hits == 1
    assert len(broker.registry) == 0


def test_unreachable_subscriber_is_removed(make_sink):
    # Verification off: it is what keeps an unreachable callback out in the first place.
    broker = build_broker(settings_for_tests(verify_subscriptions=False))
    broker.start()
    try:
        sink = make_sink()
        url = sink.url
        sink.server.stop(timeout=0)  # nothing listens there now: connection refused
        broker.subscribe(url)
        message = broker.publish("x")
        wait_until(lambda: published(broker, message.id), what="publication")
        assert (message.delivered, message.failed) == (0, 1)
        assert len(broker.registry) == 0
    finally:
        broker.stop()


def test_hung_subscriber_is_removed_and_does_not_hold_back_others(broker, make_sink):
    release = gevent.event.Event()
    hung, fast = make_sink(hold=release), make_sink()
    broker.subscribe(hung.url)
    broker.subscribe(fast.url)
    messages = [broker.publish(n) for n in range(20)]
    # The fast subscriber receives everything while the hung one is stuck on the first.
    wait_until(lambda: len(fast.received) == 20, what="fast subscriber's deliveries")
    assert hung.received == []
    # The hung one is given up on within the delivery timeout and removed.
    wait_until(lambda: len(broker.registry) == 1, timeout=3 * broker.settings.delivery_timeout)
    wait_until(lambda: all(published(broker, m.id) for m in messages), what="publication")
    assert all((m.delivered, m.failed) == (1, 1) for m in messages)
    release.set()


def test_other_4xx_fails_that_delivery_but_keeps_the_subscriber(broker, make_sink):
    picky = make_sink(status=400)
    broker.subscribe(picky.url)
    message = broker.publish("x")
    wait_until(lambda: published(broker, message.id), what="publication")
    assert (message.delivered, message.failed, picky.hits) == (0, 1, 1)
    assert len(broker.registry) == 1


def test_unsubscribe_stops_deliveries_and_resolves_what_its_lane_held(broker, make_sink):
    release = gevent.event.Event()
    slow, fast = make_sink(hold=release), make_sink()
    slow_sub, _ = broker.subscribe(slow.url)
    broker.subscribe(fast.url)
    messages = [broker.publish(n) for n in range(5)]
    wait_until(lambda: len(fast.received) == 5)
    assert broker.unsubscribe(slow_sub.id)
    assert not broker.unsubscribe(slow_sub.id)
    wait_until(lambda: all(published(broker, m.id) for m in messages), what="publication")
    release.set()
    later = broker.publish("after")
    wait_until(lambda: published(broker, later.id))
    assert later.delivered == 1 and fast.seqs[-1] == later.seq


def test_sync_sender_is_woken_when_the_message_is_published(broker, make_sink):
    sink = make_sink()
    message = broker.publish("s", mode="sync")
    assert isinstance(message.reply, SyncReply)
    assert not message.reply.wait(0.05)  # no subscriber yet: still queued
    broker.subscribe(sink.url)
    assert message.reply.wait(2.0)
    assert MessageStatus.of(message).body()["delivered"] == 1
    assert sink.seqs == [message.seq]


def test_async_sender_notifies_the_callback(broker, make_sink):
    subscriber, publisher = make_sink(), make_sink()
    broker.subscribe(subscriber.url)
    message = broker.publish({"k": 1}, callback=publisher.url)
    wait_until(lambda: publisher.received, what="notification")
    note = publisher.received[0]
    assert note["id"] == message.id and note["seq"] == message.seq
    assert (note["status"], note["delivered"], note["failed"]) == ("published", 1, 0)
    # The sink has the notification before the broker has its answer: the count follows.
    wait_until(
        lambda: broker.stats().as_dict()["notifications_sent"] == 1, what="the notification counted"
    )


def test_failed_notification_is_counted_and_does_not_block_the_queue(broker, make_sink):
    subscriber, broken = make_sink(), make_sink(status=500)
    broker.subscribe(subscriber.url)
    first = broker.publish(1, callback=broken.url)
    rest = [broker.publish(n) for n in range(2, 6)]
    wait_until(lambda: len(subscriber.received) == 5, what="deliveries")
    wait_until(lambda: all(published(broker, m.id) for m in [first, *rest]), what="publication")
    wait_until(
        lambda: broker.stats().as_dict()["notifications_failed"] == 1, what="notification failure"
    )
    assert broken.hits == broker.settings.notify_attempts


def test_full_queue_refuses_and_keeps_what_it_holds(make_sink):
    broker = build_broker(settings_for_tests(max_queue_length=3))
    broker.start()
    try:
        kept = [broker.publish(n) for n in range(3)]
        with pytest.raises(QueueFull):
            broker.publish(3)
        assert broker.stats().as_dict()["rejected_full"] == 1
        sink = make_sink()
        broker.subscribe(sink.url)
        wait_until(lambda: len(sink.received) == 3)
        assert sink.seqs == [m.seq for m in kept]
        broker.publish(4)  # room again once published
    finally:
        broker.stop()


def test_bounded_lane_holds_the_dispatcher_only_until_the_hung_subscriber_is_removed(make_sink):
    broker = build_broker(settings_for_tests(lane_capacity=2, delivery_timeout=0.5))
    broker.start()
    release = gevent.event.Event()
    try:
        hung, fast = make_sink(hold=release), make_sink()
        broker.subscribe(hung.url)
        broker.subscribe(fast.url)
        messages = [broker.publish(n) for n in range(10)]
        wait_until(lambda: len(fast.received) == 10, what="all ten despite the full lane")
        assert fast.seqs == [m.seq for m in messages]
        assert len(broker.registry) == 1
    finally:
        release.set()
        broker.stop()


def test_queue_is_bounded_in_bytes_too():
    broker = build_broker(settings_for_tests(max_queue_bytes=2048))
    broker.start()
    try:
        broker.publish("x" * 1500)
        with pytest.raises(QueueFull):
            broker.publish("y" * 1000)
        assert broker.stats().as_dict()["unpublished_bytes"] == 1502  # the JSON text of the body
        broker.publish("z" * 100)  # a smaller one still fits
    finally:
        broker.stop()


def test_the_byte_bound_counts_headers_and_callback_too(make_sink):
    broker = build_broker(settings_for_tests(max_queue_bytes=4096))
    broker.start()
    try:
        headers = {f"h{i:02d}": "v" * 97 for i in range(30)}  # 30 x 100 bytes, a 1-byte body
        broker.publish(1, headers=headers, callback=make_sink().url)
        kept = broker.stats().unpublished_bytes
        assert kept == 1 + 3000 + len(make_sink().url)
        with pytest.raises(QueueFull):  # the same again would pass 4096, though its body is 1
            broker.publish(1, headers=headers)
        assert broker.stats().unpublished_bytes == kept
    finally:
        broker.stop()


def test_snapshot_shows_subscribers_with_their_lanes_and_the_newest_messages(broker, make_sink):
    sink = make_sink()
    broker.subscribe(sink.url)
    messages = [broker.publish(n) for n in range(5)]
    wait_until(lambda: broker.stats().as_dict()["published"] == 5)
    broker.unsubscribe(broker.registry.lanes()[0].subscriber.id)
    waiting = broker.publish("no subscriber now")
    broker.subscribe(make_sink(status=400).url)
    snapshot = broker.snapshot(recent=3)
    assert [m["seq"] for m in snapshot["recent"]][:1] == [waiting.seq]
    assert [m["seq"] for m in snapshot["recent"]][1:] == [messages[-1].seq, messages[-2].seq]
    (lane,) = snapshot["subscribers"]
    assert set(lane) >= {"id", "callback", "backlog", "delivered", "failed"}
    assert snapshot["stats"]["published"] >= 5


def test_flow_control_holds_publishers_only_while_lanes_are_behind(make_sink):
    broker = build_broker(settings_for_tests(flow_backlog=3, flow_wait=30, lane_capacity=1))
    broker.start()
    release = gevent.event.Event()
    try:
        # No subscriber: messages wait in the queue by design, and nobody is held.
        early = [broker.publish(n) for n in range(10)]
        assert broker.stats().as_dict()["queue_length"] == 10
        stuck = make_sink(hold=release)
        broker.subscribe(stuck.url)
        publisher = gevent.spawn(lambda: [broker.publish(n) for n in range(10, 15)])
        # The stuck lane is full, the queue stays over the backlog: the publisher is held.
        wait_until(
            lambda: broker.stats().as_dict()["accepted"] == 11, what="the first held publish"
        )
        gevent.sleep(0.1)
        assert not publisher.ready() and broker.stats().as_dict()["accepted"] == 11
        release.set()  # the lane moves again, the queue drains, the publisher goes on
        published = publisher.get(timeout=10)
        assert [m.seq for m in published] == [11, 12, 13, 14, 15]
        wait_until(lambda: len(stuck.received) == 15, what="every message delivered")
        assert stuck.seqs == [m.seq for m in early] + [11, 12, 13, 14, 15]
    finally:
        release.set()
        broker.stop()
