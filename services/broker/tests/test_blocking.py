"""Where blocking client calls run (storage/blocking.py): on a thread of their own in a
process whose sockets block (this one: the tests do not monkey-patch), inline in a process
gevent patched (a gunicorn gevent worker, here a child process patched the same way); in
both, a greenlet waiting on one holds up no other."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import gevent

from broker.storage.blocking import Blocking

from .conftest import ROOT

PROBE = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()
    import time
    import gevent
    from gevent.monkey import get_original
    from broker.storage.blocking import Blocking

    thread_id = get_original("threading", "get_ident")  # patched, it names greenlets

    blocking = Blocking()
    ran_on, ticks, ticked_meanwhile = [], [], []

    def call():
        ran_on.append(thread_id())
        time.sleep(0.3)  # waits as a patched socket would: cooperatively
        ticked_meanwhile.append(len(ticks))

    def tick():
        while len(ticks) < 5:
            ticks.append(1)
            gevent.sleep(0.02)

    gevent.joinall([gevent.spawn(blocking.apply, call), gevent.spawn(tick)], raise_error=True)
    print(blocking.inline, ran_on == [thread_id()], ticked_meanwhile[0])
    """
)


def test_where_sockets_block_a_call_runs_on_a_thread_and_holds_up_no_greenlet():
    blocking = Blocking()
    assert not blocking.inline
    ran_on: list[int] = []
    ticks: list[int] = []
    ticked_meanwhile: list[int] = []

    def call() -> None:
        ran_on.append(threading.get_ident())
        time.sleep(0.3)  # not patched: it would stall the hub if run there
        ticked_meanwhile.append(len(ticks))

    def tick() -> None:
        while len(ticks) < 5:
            ticks.append(1)
            gevent.sleep(0.02)

    try:
        gevent.joinall([gevent.spawn(blocking.apply, call), gevent.spawn(tick)], raise_error=True)
    finally:
        blocking.kill()
    assert ran_on and ran_on[0] != threading.get_ident()
    assert ticked_meanwhile == [5]  # every tick while the call slept


def test_where_gevent_patched_sockets_a_call_runs_inline_and_waits_cooperatively():
    path = f"{ROOT / 'services/broker'}{os.pathsep}{ROOT / 'libs'}"
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONPATH": path},
    )  # fmt: skip
    assert done.stdout.split() == ["True", "True", "5"], done.stdout + done.stderr
