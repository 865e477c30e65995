"""The subscriber against a real broker on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from client.app import create_app
from client.settings import ClientSettings
from groker_common.http import HttpPool
from groker_common.testing import wait_until

http = HttpPool()


@pytest.fixture(autouse=True, scope="module")
def _close_pool() -> Iterator[None]:
    yield
    http.close()


def subscriptions(broker_url: str) -> list[dict]:
    return http.request_json("GET", f"{broker_url}/subscriptions")[1]["subscriptions"]


def test_subscribes_on_start_and_prints_each_message(broker_url, start_client, capsys):
    app = start_client()
    sub = app.extensions["groker_subscription"]
    wait_until(lambda: sub.id is not None, what="subscription")
    assert [s["id"] for s in subscriptions(broker_url)] == [sub.id]
    for n in range(3):
        http.request_json("POST", f"{broker_url}/messages", {"body": {"n": n}, "mode": "sync"})
    answer = app.test_client().get("/messages").get_json()
    assert [m["body"] for m in answer["messages"]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [m["seq"] for m in answer["messages"]] == [1, 2, 3]
    lines = capsys.readouterr().out.splitlines()
    assert lines == ['seq=1 {"n": 0}', 'seq=2 {"n": 1}', 'seq=3 {"n": 2}']


def test_resubscribes_when_the_broker_forgets_it(broker_url, start_client):
    app = start_client(resubscribe_interval=0.05)
    sub = app.extensions["groker_subscription"]
    first = wait_until(lambda: sub.id, what="subscription")
    http.request_json("DELETE", f"{broker_url}/subscriptions/{first}")
    wait_until(lambda: sub.id != first and subscriptions(broker_url), what="resubscription")
    assert [s["id"] for s in subscriptions(broker_url)] == [sub.id]


def test_unsubscribes_on_exit(broker_url, start_client):
    app = start_client()
    wait_until(lambda: subscriptions(broker_url), what="subscription")
    app.extensions["groker_on_exit"]()
    assert subscriptions(broker_url) == []


def test_drops_a_redelivered_message_and_refuses_malformed_ones():
    app = create_app(ClientSettings(callback_url="http://127.0.0.1:1/x"), subscribe=False)
    client = app.test_client()
    delivery = {"id": "a", "seq": 7, "body": "hi", "headers": {}, "published_at": 0}
    assert client.post("/messages", json=delivery).get_json()["duplicate"] is False
    assert client.post("/messages", json=delivery).get_json()["duplicate"] is True
    for bad in ({"seq": 1, "body": 1}, {"id": "b", "seq": "1", "body": 1}, [1], "x"):
        answer = client.post("/messages", json=bad)
        assert answer.status_code == 400 and answer.get_json()["error"] == "invalid delivery"
    stats = client.get("/messages").get_json()
    assert (stats["received"], stats["duplicates"]) == (1, 1)
    assert client.get("/readyz").status_code == 503  # never subscribed


def test_fault_injection_is_off_unless_enabled_then_fails_deliveries():
    off = create_app(ClientSettings(callback_url="http://127.0.0.1:1/x"), subscribe=False)
    assert off.test_client().put("/fault", json={"status": 500}).status_code == 404
    app = create_app(
        ClientSettings(callback_url="http://127.0.0.1:1/x", fault_injection=True), subscribe=False
    )
    client = app.test_client()
    assert client.put("/fault", json={"status": 99}).status_code == 400
    assert client.put("/fault", json={"status": 500}).status_code == 200
    delivery = {"id": "a", "seq": 1, "body": 1}
    assert client.post("/messages", json=delivery).status_code == 500
    assert client.put("/fault", json={"status": None}).status_code == 200
    assert client.post("/messages", json=delivery).status_code == 200
    assert client.get("/messages").get_json()["received"] == 1
