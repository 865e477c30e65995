"""The cluster's senders (coalescing.py): one send at a time, what came meanwhile in the
next, in order; a batch handed back goes first."""

from __future__ import annotations

import gevent

from broker.coalescing import Coalescer


def test_what_comes_while_a_batch_is_on_its_way_goes_in_the_next_in_order():
    sent: list[list[int]] = []
    on_its_way = [0]

    def send(items: list[int]) -> None:
        on_its_way[0] += 1
        assert on_its_way[0] == 1, "two sends at once"
        gevent.sleep(0.05)  # a round trip
        sent.append(items)
        on_its_way[0] -= 1

    sender = Coalescer(send)
    sender.add(0)  # alone: goes at once
    gevent.sleep(0.01)
    for i in range(1, 6):
        sender.add(i)
        gevent.sleep(0.005)
    gevent.sleep(0.2)
    sender.stop()
    assert sent == [[0], [1, 2, 3, 4, 5]]


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
    sender.add("first")
    gevent.sleep(0.2)
    sender.stop()
    assert sent == [["first", "later"]]
