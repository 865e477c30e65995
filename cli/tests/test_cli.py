"""The `groker` command against a real broker, run as a user runs it: the installed console
script in a subprocess, its output and exit code checked."""

from __future__ import annotations

import base64
import json
import os
import pty
import re
import signal
import socket
import subprocess
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from groker_cli.batches import MAX_BATCH_BYTES, Batch, group, refused_index
from groker_cli.callback_url import default_callback_url
from groker_cli.publishers import parse_body
from groker_cli.receiver import Receiver
from groker_cli.retrying import backoff, retry_wait
from groker_common.testing import free_port

COMMANDS = ["publish", "subscribe", "stats", "subscriptions"]


def signed_headers(
    secret: str, message_id: str, raw: bytes, at: datetime | None = None
) -> dict[str, str]:
    """Standard Webhooks headers, made with the library the receiver checks them with."""
    at = at or datetime.now(tz=UTC)
    return {
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, at, raw.decode()),
    }


def a_delivery(body: Any, seq: int = 1) -> tuple[str, bytes]:
    """A delivery as the broker sends it: its id and raw JSON."""
    message_id = str(uuid.uuid4())
    envelope = {"id": message_id, "seq": seq, "body": body, "headers": {}, "published_at": 1.0}
    return message_id, json.dumps(envelope).encode()


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


# --- help and usage ---------------------------------------------------------------------


def test_help_for_every_command(groker):
    group = groker.run("--help")
    assert group.returncode == 0, group.stderr
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", group.stdout, re.M), group.stdout
    for variable in ("GROKER_BROKER_URL", "GROKER_TOKEN"):
        assert variable in group.stdout
    for code, meaning in [
        (0, "ok"),
        (1, "answered an error"),
        (2, "usage"),
        (3, "cannot be reached"),
        (4, "token"),
        (5, "sync"),
    ]:
        assert re.search(rf"^\s+{code}\s+.*{meaning}", group.stdout, re.M), (code, group.stdout)
    for command in COMMANDS:
        result = groker.run(command, "--help")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"Usage: groker {command} "), result.stdout
    publish_help = groker.run("publish", "--help").stdout
    assert "BODY|-" in publish_help
    assert "--idempotency-key KEY" in publish_help and "KEY-N" in publish_help
    # Help is wrapped to the terminal's width, and may break a name at a hyphen.
    assert "--batch N" in publish_help and "KEY-FIRST-LAST" in re.sub(r"\s", "", publish_help)
    assert "--callback-url" in groker.run("subscribe", "--help").stdout


@pytest.mark.parametrize(
    "args",
    [
        ["publish", "--sync", "--callback", "http://example.com/n", "x"],
        ["publish", "--header", "no-equals-sign", "x"],
        ["publish", "--idempotency-key", "", "x"],
        ["publish", "--idempotency-key", " padded", "x"],
        ["publish", "--idempotency-key", "cl\u00e9", "x"],
        ["publish", "--idempotency-key", "k" * 256, "x"],
        ["publish", "--idempotency-key", "k" * 250, "--batch", "1", "-"],
        ["publish", "--idempotency-key", "k" * 240, "-"],  # room for -FIRST-LAST
        ["publish", "--batch", "0", "-"],
        ["publish"],
        ["--broker", "localhost:8000", "stats"],
        ["--timeout", "0", "stats"],
        ["subscribe", "--listen", "no-port"],
        ["no-such-command"],
    ],
)
def test_usage_errors_exit_2(groker, args):
    result = groker.run(*args)
    assert result.returncode == 2, result
    assert "Error:" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_body_is_json_when_it_parses_and_text_otherwise():
    assert parse_body('{"hello": 1}') == {"hello": 1}
    assert parse_body("42") == 42
    assert parse_body('"quoted"') == "quoted"
    assert parse_body("null") is None
    assert parse_body("hello world") == "hello world"
    assert parse_body("NaN") == "NaN"  # Python's json reads it; it is not JSON
    assert parse_body("1e999") == "1e999"  # Python reads inf, the broker would refuse it
    assert parse_body('{"a": [-1e999]}') == '{"a": [-1e999]}'
    assert parse_body("1e308") == 1e308
    assert parse_body("") == ""


# --- publish ----------------------------------------------------------------------------


def test_publish_sends_json_as_json_and_text_as_a_string(
    broker, make_subscriber, groker, wait_until
):
    subscriber = make_subscriber(broker)
    bodies = ['{"hello": 1}', "plain text", "42", '"quoted"', "  spaced  ", "NaN"]
    answers = []
    for body in bodies:
        result = groker.run("--broker", broker.url, "publish", body)
        assert result.returncode == 0, result.stderr
        answers.append(json.loads(result.stdout))
    assert [a["status"] for a in answers] == ["queued"] * len(bodies)
    assert [a["seq"] for a in answers] == list(range(1, len(bodies) + 1))
    assert broker.get(f"/messages/{answers[0]['id']}")["seq"] == 1

    wait_until(lambda: len(subscriber.bodies) == len(bodies), what="every body")
    assert subscriber.bodies == [{"hello": 1}, "plain text", 42, "quoted", "  spaced  ", "NaN"]


def test_publish_headers_reach_the_subscriber(broker, groker, wait_until):
    deliveries: list[dict[str, Any]] = []
    receiver = Receiver("127.0.0.1", 0, on_message=deliveries.append, on_warning=print)
    receiver.start()
    subscription = None
    try:
        answer = broker.post("/subscriptions", {"callback": f"http://127.0.0.1:{receiver.port}/"})
        assert answer.status_code == 201, answer.text
        subscription = answer.json()
        receiver.subscribed(subscription.get("secret"))
        result = groker.run(
            "--broker", broker.url, "publish", "--header", "trace=abc", "--header", "k=v=w", "7"
        )
        assert result.returncode == 0, result.stderr
        wait_until(lambda: deliveries, what="the delivery")
        assert deliveries[0]["headers"] == {"trace": "abc", "k": "v=w"}
        assert deliveries[0]["body"] == 7
    finally:
        if subscription is not None:
            broker.http.delete(f"{broker.url}/subscriptions/{subscription['id']}", timeout=5)
        receiver.close()


def test_publish_stdin_publishes_every_line_in_order(broker, make_subscriber, groker, wait_until):
    subscriber = make_subscriber(broker)
    lines = [json.dumps({"n": n}) if n % 2 else f"line {n}" for n in range(500)]
    stdin = "\n".join(lines[:250]) + "\n\n   \n" + "\n".join(lines[250:]) + "\n"
    accepted_before = broker.stats()["accepted"]

    result = groker.run("--broker", broker.url, "publish", "-", input=stdin)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bar when stderr is not a terminal
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == 500
    first = answers[0]["seq"]
    assert [a["seq"] for a in answers] == list(range(first, first + 500))
    assert broker.stats()["accepted"] == accepted_before + 500
    wait_until(lambda: len(subscriber.bodies) == 500, timeout=30, what="500 deliveries")
    assert subscriber.bodies == [parse_body(line) for line in lines]


def test_publish_stdin_shows_a_progress_bar_on_a_terminal(broker, groker):
    """stderr on a pseudo-terminal and stdout a pipe, as in `groker publish - <in >out`."""
    terminal_fd, stderr_fd = pty.openpty()
    shown = bytearray()

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(terminal_fd, 4096)
            except OSError:  # EIO: every writer has closed its end
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    try:
        with groker.popen(
            "--broker", broker.url, "publish", "-",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr_fd,
        ) as process:  # fmt: skip
            os.close(stderr_fd)
            stderr_fd = -1
            out, _ = process.communicate("".join(f"{n}\n" for n in range(60)), timeout=60)
        reader.join(timeout=10)
    finally:
        if stderr_fd != -1:
            os.close(stderr_fd)
        os.close(terminal_fd)
    assert process.returncode == 0
    assert [json.loads(line)["seq"] for line in out.splitlines()] == list(range(1, 61))
    assert "publishing" in shown.decode() and "60/60" in shown.decode(), shown.decode()


# --- publish -: batches -------------------------------------------------------------------


def answers_of(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_stdin_goes_in_batches_of_consecutive_lines(
    start_broker, make_subscriber, groker, wait_until
):
    broker = start_broker(GUNICORN_ACCESSLOG="-")
    subscriber = make_subscriber(broker)
    lines = [json.dumps({"n": n}) for n in range(250)]

    result = groker.run(
        "--broker", broker.url, "publish", "--batch", "100", "-", input="\n".join(lines)
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    answers = answers_of(result)
    assert [a["seq"] for a in answers] == list(range(1, 251))
    assert {a["status"] for a in answers} == {"queued"}
    assert broker.stats()["accepted"] == 250
    assert broker.posted() == ["/subscriptions"] + ["/messages/batch"] * 3
    wait_until(lambda: len(subscriber.bodies) == 250, what="250 deliveries")
    assert subscriber.bodies == [{"n": n} for n in range(250)]


def test_batch_1_sends_each_line_alone_as_before(start_broker, groker):
    broker = start_broker(GUNICORN_ACCESSLOG="-")
    result = groker.run("--broker", broker.url, "publish", "--batch", "1", "-", input="a\nb\n")
    assert result.returncode == 0, result.stderr
    assert [a["seq"] for a in answers_of(result)] == [1, 2]
    assert broker.posted() == ["/messages"] * 2


def test_a_batch_key_is_key_first_line_last_line(broker, groker):
    """Lines 102 to 201 (line 1 is blank) published beforehand as the documented key says:
    the CLI's second batch is that one, replayed; a rerun of the whole input publishes
    nothing new."""
    lines = [f"line {n}" for n in range(2, 252)]
    stdin = "\n" + "\n".join(lines) + "\n"
    by_hand = broker.http.post(
        f"{broker.url}/messages/batch",
        json={"messages": [{"body": line} for line in lines[100:200]]},
        headers={"Idempotency-Key": "import-7-102-201"},
        timeout=5,
    )
    assert by_hand.status_code == 202, by_hand.text
    args = ("--broker", broker.url, "publish", "--idempotency-key", "import-7", "-")

    first = groker.run(*args, input=stdin)

    assert first.returncode == 0, first.stderr
    answers = answers_of(first)
    assert answers[100:200] == by_hand.json()["messages"]
    assert [a["seq"] for a in answers[:100]] == list(range(101, 201))
    assert [a["seq"] for a in answers[200:]] == list(range(201, 251))
    assert first.stderr == (
        "groker: replayed: the broker already had stdin lines 102-201 (seq 1-100) for "
        "Idempotency-Key import-7-102-201; nothing new was queued\n"
    )
    assert (broker.stats()["accepted"], broker.stats()["replayed"]) == (250, 1)

    rerun = groker.run(*args, input=stdin)

    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout == first.stdout
    assert [line.split(" for ")[1] for line in rerun.stderr.splitlines()] == [
        f"Idempotency-Key import-7-{span}; nothing new was queued"
        for span in ("2-101", "102-201", "202-251")
    ]
    assert (broker.stats()["accepted"], broker.stats()["replayed"]) == (250, 4)


def test_a_batch_is_closed_before_900_kb_of_json(start_broker, groker):
    broker = start_broker(GUNICORN_ACCESSLOG="-")
    lines = [json.dumps({"n": n, "pad": "x" * 200_000}) for n in range(10)]
    result = groker.run("--broker", broker.url, "publish", "-", input="\n".join(lines))
    assert result.returncode == 0, result.stderr
    assert [a["seq"] for a in answers_of(result)] == list(range(1, 11))
    assert broker.posted() == ["/messages/batch"] * 3  # 4 + 4 + 2 lines of 200 KB


def test_a_refused_line_in_a_batch_is_named_by_its_line_number(broker, groker):
    url = ("--broker", broker.url)
    lines = [f"line {n}" for n in range(1, 251)]
    lines[149] = json.dumps("x" * 1_100_000)  # more than the broker's 1 MiB: alone, 413

    too_large = groker.run(*url, "publish", "-", input="\n".join(lines))

    assert too_large.returncode == 1, too_large
    assert_one_line_error(too_large, "Error: stdin line 150: the broker answered HTTP 413")
    assert [a["seq"] for a in answers_of(too_large)] == list(range(1, 150))
    assert broker.stats()["accepted"] == 149

    # Every message is refused for the header; the broker names the first, on line 2.
    long_header = groker.run(*url, "publish", "--header", f"h={'v' * 5000}", "-", input="\na\n")
    assert long_header.returncode == 1, long_header
    assert_one_line_error(
        long_header, "Error: stdin line 2: the broker answered HTTP 400", "messages.0.headers.h"
    )

    # A lone surrogate: JSON to Python, malformed to the broker, which names no message.
    lines = [f"line {n}" for n in range(1, 251)]
    lines[149] = '"\\ud800"'
    malformed = groker.run(*url, "publish", "-", input="\n".join(lines))
    assert malformed.returncode == 1, malformed
    assert_one_line_error(
        malformed, "Error: stdin lines 101-200: the broker answered HTTP 400", "malformed JSON"
    )
    assert len(answers_of(malformed)) == 100
    assert broker.stats()["accepted"] == 149 + 100


def test_a_refusal_names_the_line_of_the_message_it_names():
    batch = Batch()
    for line_number in (3, 4, 7):
        batch.add(line_number, {"body": line_number}, 10)
    refusal = {"error": "invalid request", "detail": [{"field": "messages.2.body"}]}
    assert refused_index(refusal) == 2
    assert batch.where(refusal) == "stdin line 7"
    assert batch.where({"error": "malformed JSON", "detail": [{"field": None}]}) == (
        "stdin lines 3-7"
    )
    assert batch.where({"detail": [{"field": "messages.9.body"}]}) == "stdin lines 3-7"
    assert batch.key("imp") == "imp-3-7"
    assert batch.key(None) != batch.key(None)


def test_lines_are_grouped_by_count_and_by_bytes():
    messages = [(n, {"body": "x" * 290_000}) for n in range(1, 8)]
    grouped = [b.line_numbers for b in group(iter(messages), 2)]
    assert grouped == [[1, 2], [3, 4], [5, 6], [7]]
    grouped = [b.line_numbers for b in group(iter(messages), 100)]
    assert grouped == [[1, 2, 3], [4, 5, 6], [7]]
    assert all(b.size <= MAX_BATCH_BYTES for b in group(iter(messages), 100))
    huge = [(1, {"body": "x"}), (2, {"body": "x" * MAX_BATCH_BYTES}), (3, {"body": "x"})]
    assert [b.line_numbers for b in group(iter(huge), 100)] == [[1], [2], [3]]


def test_a_sync_batch_not_published_in_time_waits_again_then_exits_5(start_broker, groker):
    broker = start_broker(GROKER_SYNC_TIMEOUT="1")  # and no subscriber: nothing is published
    result = groker.run(
        *("--broker", broker.url, "publish", "--sync", "--sync-timeout", "1"),
        *("--retries", "1", "-"),
        input="a\nb\nc\n",
    )
    assert result.returncode == 5, result
    assert [(a["seq"], a["status"]) for a in answers_of(result)] == [
        (1, "queued"),
        (2, "queued"),
        (3, "queued"),
    ]
    retry, error = result.stderr.splitlines()
    assert "HTTP 504" in retry and "(1/1)" in retry
    assert error == (
        "Error: stdin lines 1-3: 3 of its 3 messages were not published within the broker's "
        "sync timeout; they stay queued and are published later"
    )
    assert (broker.stats()["accepted"], broker.stats()["replayed"]) == (3, 1)


def test_a_sync_batch_prints_each_outcome(broker, make_subscriber, groker):
    make_subscriber(broker)
    result = groker.run("--broker", broker.url, "publish", "--sync", "-", input="a\nb\n")
    assert result.returncode == 0, result.stderr
    outcomes = answers_of(result)
    assert [(a["seq"], a["status"], a["delivered"]) for a in outcomes] == [
        (1, "published", 1),
        (2, "published", 1),
    ]


def test_a_busy_broker_is_retried_after_its_retry_after(
    start_broker, make_subscriber, groker, wait_until
):
    broker = start_broker(GROKER_MAX_QUEUE_LENGTH="2")
    for body in ("one", "two"):  # no subscriber: they wait, and the queue is full
        assert broker.post("/messages", {"body": body}).status_code == 202

    refused = groker.run("--broker", broker.url, "publish", "--retries", "1", "three")
    assert refused.returncode == 1
    assert "publishing again with the same Idempotency-Key in 1 s (1/1)" in refused.stderr
    assert refused.stderr.splitlines()[-1].startswith("Error: the broker answered HTTP 503")
    assert broker.stats()["rejected_full"] == 2

    with groker.popen(
        "--broker", broker.url, "publish", "four", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as publisher:
        wait_until(lambda: broker.stats()["rejected_full"] >= 3, what="the publish refused")
        subscriber = make_subscriber(broker)  # takes the queued two, which frees a place
        out, err = publisher.communicate(timeout=30)
    assert publisher.returncode == 0, err
    assert json.loads(out)["status"] == "queued"
    assert "publishing again" in err
    wait_until(lambda: len(subscriber.bodies) == 3, what="three deliveries")
    assert subscriber.bodies == ["one", "two", "four"]


def test_a_sync_publish_not_published_in_time_waits_again_then_exits_5(start_broker, groker):
    broker = start_broker(GROKER_SYNC_TIMEOUT="1")  # and no subscriber: nothing is published
    result = groker.run(
        "--broker", broker.url, "publish", "--sync", "--sync-timeout", "1", "--retries", "1", "x"
    )
    assert result.returncode == 5, result
    answer = json.loads(result.stdout)
    assert answer["status"] == "queued"
    first, last = result.stderr.splitlines()
    assert "HTTP 504" in first and "(1/1)" in first
    assert f"message {answer['id']} was not published within" in last
    assert broker.get(f"/messages/{answer['id']}")["status"] == "queued"
    # The retry waited on the same message: the broker replayed it, queued nothing new.
    assert (broker.stats()["accepted"], broker.stats()["replayed"]) == (1, 1)


def test_an_error_answer_exits_1_with_the_brokers_error(broker, groker):
    result = groker.run("--broker", broker.url, "publish", "--callback", "ftp://host/x", "y")
    assert result.returncode == 1
    assert_one_line_error(result, "the broker answered HTTP 400", '"error": "invalid request"')
    assert result.stdout == ""
    assert broker.stats()["accepted"] == 0


# --- publishing once: Idempotency-Key -----------------------------------------------------


def test_a_publish_whose_answer_never_came_is_sent_again_with_the_same_key(start_broker, groker):
    """The default key, seen through its effect: the broker holds the sync publish longer
    than the CLI waits, so the CLI gives up on the answer and sends it again; the retry is
    the same message (replayed), not a second one."""
    broker = start_broker(GROKER_SYNC_TIMEOUT="3")  # and no subscriber: it is held 3 s
    result = groker.run(
        *("--broker", broker.url, "--timeout", "1"),
        *("publish", "--sync", "--sync-timeout", "0.5", "--retries", "1", "x"),
    )
    assert result.returncode == 3, result
    assert "no answer within 1.5 s; publishing again with the same Idempotency-Key" in (
        result.stderr
    )
    stats = broker.stats()
    assert (stats["accepted"], stats["replayed"]) == (1, 1)


def test_each_message_gets_its_own_key_by_default(broker, groker):
    result = groker.run("--broker", broker.url, "publish", "-", input="same\nsame\n")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["seq"] for line in result.stdout.splitlines()] == [1, 2]
    again = groker.run("--broker", broker.url, "publish", "same")
    assert json.loads(again.stdout)["seq"] == 3 and "replayed" not in again.stderr
    assert broker.stats()["replayed"] == 0


def test_the_same_key_and_message_twice_is_one_message(broker, groker):
    args = ("--broker", broker.url, "publish", "--idempotency-key", "order-17", '{"n": 17}')
    first, second = groker.run(*args), groker.run(*args)
    assert (first.returncode, second.returncode) == (0, 0), second.stderr
    assert json.loads(second.stdout) == json.loads(first.stdout)
    assert first.stderr == ""
    assert second.stderr.startswith(
        f"groker: replayed: the broker already had message {json.loads(first.stdout)['id']}"
    )
    assert (broker.stats()["accepted"], broker.stats()["replayed"]) == (1, 1)


def test_the_same_key_with_another_message_exits_1_and_is_not_retried(broker, groker):
    url = ("--broker", broker.url)
    assert groker.run(*url, "publish", "--idempotency-key", "k-1", "one").returncode == 0
    result = groker.run(*url, "publish", "--idempotency-key", "k-1", "two")
    assert result.returncode == 1, result
    assert_one_line_error(
        result,
        "Idempotency-Key k-1 was used before for another message",
        "not retried: HTTP 422",
        '"error": "idempotency key reused"',
    )
    assert result.stdout == ""
    assert broker.stats()["accepted"] == 1


def test_stdin_with_a_key_publishes_only_the_new_lines_when_run_again(broker, groker):
    """With --batch 1 line N is sent with KEY-N: a rerun of the same input, grown by a line,
    publishes that line only (blank lines count, so the numbers stay put). In batches the
    last one would grow, and with it its key."""
    args = ("--broker", broker.url, "publish", "--idempotency-key", "batch-7", "--batch", "1", "-")
    first = groker.run(*args, input="a\n\nb\n")
    assert first.returncode == 0, first.stderr
    rerun = groker.run(*args, input="a\n\nb\nc\n")
    assert rerun.returncode == 0, rerun.stderr
    answers = [json.loads(line) for line in rerun.stdout.splitlines()]
    assert answers[:2] == [json.loads(line) for line in first.stdout.splitlines()]
    assert answers[2]["seq"] == 3
    assert rerun.stderr.count("replayed") == 2
    assert (broker.stats()["accepted"], broker.stats()["replayed"]) == (3, 2)


def test_a_publish_is_retried_until_the_broker_comes_up(start_broker, groker):
    port = free_port()
    with groker.popen(
        *("--broker", f"http://127.0.0.1:{port}", "publish", "hello"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as publisher:
        assert publisher.stderr is not None
        first_retry = publisher.stderr.readline()  # the broker is started only after it
        broker = start_broker(port=port)
        out, err = publisher.communicate(timeout=60)
    assert publisher.returncode == 0, err
    assert json.loads(out)["seq"] == 1
    assert first_retry == (
        f"groker: cannot reach the broker at http://127.0.0.1:{port}: connection refused; "
        "publishing again with the same Idempotency-Key in 0.5 s (1/5)\n"
    )
    assert broker.stats()["accepted"] == 1


def answer_with(status: int, headers: dict[str, str] | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers or {})
    return response


def test_which_answers_are_retried_and_after_how_long():
    assert [backoff(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    for status in (409, 429, 503):
        assert retry_wait(answer_with(status), sync=False, attempt=1) == 0.5
        assert retry_wait(answer_with(status, {"Retry-After": "3"}), False, 1) == 3
        assert retry_wait(answer_with(status, {"Retry-After": "3"}), False, 4) == 4
        assert retry_wait(answer_with(status, {"Retry-After": "999"}), False, 1) == 30
    assert retry_wait(answer_with(504), sync=True, attempt=3) == 0  # the broker just waited
    for status in (200, 202, 400, 401, 404, 422, 500, 504):
        assert retry_wait(answer_with(status), sync=False, attempt=1) is None


# --- subscribe --------------------------------------------------------------------------


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_subscribe_prints_what_sync_publishes_delivered_and_unsubscribes_on_a_signal(
    broker, make_subscriber, groker, wait_until, stop_signal
):
    subscriber = make_subscriber(broker)
    for body in ('{"n": 1}', '{"n": 2}'):
        result = groker.run("--broker", broker.url, "publish", "--sync", body)
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert (answer["status"], answer["delivered"], answer["failed"]) == ("published", 1, 0)
    wait_until(lambda: len(subscriber.bodies) == 2, what="the two bodies on stdout")
    assert subscriber.bodies == [{"n": 1}, {"n": 2}]

    assert subscriber.stop(stop_signal) == 0, subscriber.stderr
    assert broker.callbacks() == []
    assert f"unsubscribed {subscriber.id}" in subscriber.stderr
    assert "Traceback" not in subscriber.stderr


def test_the_subscriber_echoes_challenges_checks_signatures_and_drops_repeats(
    broker, make_subscriber, wait_until
):
    subscriber = make_subscriber(broker)
    # Subscribing the same callback again is the same subscription; a broker that signs
    # deliveries tells its secret again, which lets this test sign as the broker does.
    again = broker.post("/subscriptions", {"callback": subscriber.callback}).json()
    assert again["id"] == subscriber.id
    secret = again.get("secret")

    def post(raw: bytes, headers: dict[str, str]) -> requests.Response:
        return http.post(subscriber.callback, data=raw, headers=headers, timeout=5)

    def headers_for(message_id: str, raw: bytes) -> dict[str, str]:
        if secret is None:
            return {"Content-Type": "application/json"}
        return signed_headers(secret, message_id, raw)

    with requests.Session() as http:
        challenge = {"type": "subscription.verify", "challenge": "c-7f3a"}
        answer = http.post(subscriber.callback, json=challenge, timeout=5)
        assert (answer.status_code, answer.json()) == (200, {"challenge": "c-7f3a"})

        message_id, raw = a_delivery({"first": True})
        for _ in range(2):  # the second is a repeat, as after a broker crash
            answer = post(raw, headers_for(message_id, raw))
            assert answer.status_code == 200, answer.text
        assert answer.json()["duplicate"] is True

        not_json = post(b"{not json", {"Content-Type": "application/json"})
        assert not_json.status_code == 400 and "error" in not_json.json()
        shapeless = json.dumps({"id": "x", "seq": "one"}).encode()
        answer = post(shapeless, headers_for("x", shapeless))
        assert answer.status_code == 400 and answer.json()["error"] == "invalid delivery"

        if secret is not None:
            forged_id, forged = a_delivery("forged")
            answer = post(forged, signed_headers(new_secret(), forged_id, forged))
            assert answer.status_code == 401 and answer.json()["error"] == "invalid signature"
            assert post(forged, {"Content-Type": "application/json"}).status_code == 401

        last_id, last = a_delivery("last")
        assert post(last, headers_for(last_id, last)).status_code == 200

    wait_until(lambda: len(subscriber.bodies) == 2, what="two bodies")
    assert subscriber.bodies == [{"first": True}, "last"]
    if secret is not None:
        wait_until(lambda: "signature does not verify" in subscriber.stderr, what="a warning")
    assert subscriber.stop() == 0


def test_the_receiver_takes_only_deliveries_signed_with_the_secret():
    """The receiver's checks with a known secret, through real HTTP, in this process."""
    secret = new_secret()
    received: list[dict[str, Any]] = []
    warnings: list[str] = []
    receiver = Receiver("127.0.0.1", 0, on_message=received.append, on_warning=warnings.append)
    receiver.start()
    url = f"http://127.0.0.1:{receiver.port}/hook"
    try:
        with requests.Session() as http:
            # The challenge comes before the subscribe answer (and its secret): no wait.
            challenge = {"type": "subscription.verify", "challenge": "abc"}
            assert http.post(url, json=challenge, timeout=2).json() == {"challenge": "abc"}
            with pytest.raises(ValueError, match="unusable webhook secret"):
                receiver.subscribed("")
            receiver.subscribed(secret)

            message_id, raw = a_delivery({"ok": 1})
            good = signed_headers(secret, message_id, raw)
            assert http.post(url, data=raw, headers=good, timeout=5).status_code == 200

            other_id, other = a_delivery({"ok": 2})
            stale = datetime.now(tz=UTC) - timedelta(minutes=10)
            unsigned = {"Content-Type": "application/json"}
            refusals = {
                "wrong secret": signed_headers(new_secret(), other_id, other),
                "body changed": signed_headers(secret, other_id, other.replace(b"2", b"3")),
                "no signature": unsigned,
                "too old": signed_headers(secret, other_id, other, at=stale),
                "garbled": {**signed_headers(secret, other_id, other), "webhook-signature": "v1"},
            }
            for case, headers in refusals.items():
                answer = http.post(url, data=other, headers=headers, timeout=5)
                assert answer.status_code == 401, case
                assert answer.json()["error"] == "invalid signature", case
            assert http.get(url, timeout=5).status_code == 405
    finally:
        receiver.close()
    assert [m["body"] for m in received] == [{"ok": 1}]
    assert len(warnings) == len(refusals)
    assert receiver.rejected == len(refusals)


def test_the_default_callback_for_a_broker_on_loopback_is_the_docker_host():
    for broker_url in ("http://localhost:8000", "http://127.0.0.1:8000", "http://[::1]:8000"):
        assert default_callback_url(broker_url, 4321) == "http://host.docker.internal:4321/"


def own_ipv4_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses, from its interfaces (Linux ioctl)."""
    import fcntl
    import struct

    addresses = []
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                request = struct.pack("256s", name.encode()[:15])
                packed = fcntl.ioctl(probe.fileno(), 0x8915, request)  # SIOCGIFADDR
            except OSError:  # no IPv4 address on this interface
                continue
        address = socket.inet_ntoa(packed[20:24])
        if not address.startswith("127."):
            addresses.append(address)
    return addresses


def test_the_default_callback_for_another_broker_is_this_machines_address_towards_it():
    own = own_ipv4_addresses()
    if not own:
        pytest.skip("this machine has no IPv4 address but loopback")
    # The route from this machine to one of its own addresses leaves from that address.
    # A UDP "connect" only picks the route: nothing is sent anywhere.
    for address in own:
        assert default_callback_url(f"http://{address}:8000", 4321) == f"http://{address}:4321/"


# --- looking in -------------------------------------------------------------------------


def test_stats_and_subscriptions(broker, make_subscriber, groker):
    subscriber = make_subscriber(broker)
    stats = groker.run("--broker", broker.url, "stats")
    assert stats.returncode == 0, stats.stderr
    assert stats.stdout.startswith('{\n  "')
    shown = json.loads(stats.stdout)
    assert shown["subscribers"] == 1 and shown["accepted"] == 0

    table = groker.run("--broker", broker.url, "subscriptions")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["id", "callback", "created_at"]
    assert [row.split()[:2] for row in rows] == [[subscriber.id, subscriber.callback]]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", rows[0].split()[2])

    as_json = groker.run("--broker", broker.url, "subscriptions", "--json")
    assert json.loads(as_json.stdout) == broker.get("/subscriptions")


def test_the_broker_url_comes_from_the_environment(broker, groker):
    result = groker.run("stats", GROKER_BROKER_URL=broker.url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["store"] == "memory"


# --- errors scripts can tell apart ------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["stats"],
        ["subscriptions"],
        ["publish", "--retries", "0", "x"],
        ["publish", "--retries", "0", "-"],
        ["subscribe", "--listen", "127.0.0.1:0", "--callback-url", "http://127.0.0.1:9/"],
    ],
    ids=lambda args: args[0],
)
def test_a_broker_that_is_down_exits_3_with_one_line(groker, args):
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    result = groker.run("--broker", url, *args, input="line\n", timeout=30)
    assert result.returncode == 3, result
    assert_one_line_error(result, f"cannot reach the broker at {url}: connection refused")


def test_a_broker_that_does_not_answer_exits_3(groker):
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result = groker.run("--broker", url, "--timeout", "0.5", "stats", timeout=30)
    assert result.returncode == 3, result
    assert_one_line_error(result, f"cannot reach the broker at {url}: no answer within 0.5 s")


def test_a_refused_callback_is_the_brokers_error_not_a_token_problem(start_broker, groker):
    broker = start_broker(GROKER_ALLOWED_NETWORKS="")  # loopback callbacks refused
    probe = broker.post("/subscriptions", {"callback": "http://127.0.0.1:9/"})
    if probe.status_code != 403:
        pytest.skip(f"this broker answers {probe.status_code} to a loopback callback, not 403")
    result = groker.run(
        "--broker", broker.url, "subscribe", "--listen", "127.0.0.1:0",
        "--callback-url", "http://127.0.0.1:9/",
    )  # fmt: skip
    assert result.returncode == 1, result
    assert_one_line_error(result, "the broker answered HTTP 403", "callback not allowed")


def test_a_refused_token_exits_4(start_broker, groker):
    broker = start_broker(GROKER_PUBLISH_TOKENS="pub-token", GROKER_MANAGE_TOKENS="mgmt-token")
    if broker.post("/messages", {"body": "probe"}).status_code == 202:
        pytest.skip("this broker does not check tokens (GROKER_PUBLISH_TOKENS) yet")
    url = ["--broker", broker.url]

    for args in (["publish", "x"], ["--token", "wrong", "publish", "x"], ["subscriptions"]):
        result = groker.run(*url, *args)
        assert result.returncode == 4, (args, result)
        assert_one_line_error(result, "the broker refused the token (or none was given): HTTP 401")

    assert groker.run(*url, "--token", "pub-token", "publish", "x").returncode == 0
    assert groker.run(*url, "publish", "y", GROKER_TOKEN="pub-token").returncode == 0
    listed = groker.run(*url, "--token", "mgmt-token", "subscriptions", "--json")
    assert listed.returncode == 0, listed.stderr
    assert broker.stats()["accepted"] == 2
