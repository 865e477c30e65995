"""The cluster's senders (coalescing.py): one send at a time, what came meanwhile in the
next, in order; a batch handed back goes first."""

from __future__ import annotations

import gevent.event

from broker.coalescing import Coalescer
from groker_common.testing import wait_until


def test_what_comes_while_a_batch_is_on_its_way_goes_in_the_next_in_order():
    sent: list[list[int]] = []
    on_its_way = [0]
    arrived = gevent.event.Event()  # the round trip's answer, which the test lets in

    def send(items: list[int]) -> None:
        on_its_way[0] += 1
        assert on_its_way[0] == 1, "two sends at once"
        arrived.wait()
        arrived.clear()
        sent.append(items)
        on_its_way[0] -= 1

    sender = Coalescer(send)
    try:
        sender.add(0)  # alone: goes at once
        wait_until(lambda: on_its_way[0] == 1, what="the first send")
        for i in range(1, 6):
            sender.add(i)
        arrived.set()
        wait_until(lambda: on_its_way[0] == 1 and len(sent) == 1, what="the second send")
        arrived.set()
        wait_until(lambda: len(sent) == 2, what="the second batch")
        assert sent == [[0], [1, 2, 3, 4, 5]]
    finally:
        sender.stop()


def test_a_batch_handed_back_goes_first_in_the_next():
    sent: list[list[str]] = []
    failures = [1]

    def send(items: list[str]) -> None:
        if failures[0]:
            failures[0] -= 1
            sender.add("later")  # comes while the failed batch waits
            sender.again(items, 0.05)
            return
        sent.append(items)

    sender = Coalescer(send)
    try:
        sender.add("first")
        wait_until(lambda: sent, what="the batch sent again")
        assert sent == [["first", "later"]]
    finally:
        sender.stop()
