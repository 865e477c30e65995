"""Where blocking client calls run (storage/blocking.py): on a thread of their own in a
process whose sockets block (as the tests' processes are), inline in a process gevent
patched (a gunicorn gevent worker); in both, a greenlet waiting on one holds up no other.
Each case is a child process, patched or not, running the same probe."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from .conftest import ROOT

PROBE = textwrap.dedent(
    """
    import sys
    from gevent import monkey
    if sys.argv[1] == "patched":
        monkey.patch_all()
    import time
    import gevent
    from broker.storage.blocking import Blocking

    thread_id = monkey.get_original("threading", "get_ident")  # patched, it names greenlets
    blocking = Blocking()
    ran_on, ticks, ticked_meanwhile = [], [], []

    def call():
        ran_on.append(thread_id())
        time.sleep(0.3)  # patched, a cooperative wait; not, it would stall the hub
        ticked_meanwhile.append(len(ticks))

    def tick():
        while len(ticks) < 5:
            ticks.append(1)
            gevent.sleep(0.02)

    gevent.joinall([gevent.spawn(blocking.apply, call), gevent.spawn(tick)], raise_error=True)
    blocking.kill()
    print(blocking.inline, ran_on == [thread_id()], ticked_meanwhile[0])
    """
)


@pytest.mark.parametrize(
    ("process", "inline"), [("patched", "True"), ("unpatched", "False")]
)  # fmt: skip
def test_a_call_runs_inline_only_where_sockets_are_patched_and_holds_up_no_greenlet(
    process: str, inline: str
):
    path = f"{ROOT / 'services/broker'}{os.pathsep}{ROOT / 'libs'}"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, process], capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONPATH": path},
    )  # fmt: skip
    # Inline: on this thread; else on another. Either way every tick while the call slept.
    assert done.stdout.split() == [inline, inline, "5"], done.stdout + done.stderr
