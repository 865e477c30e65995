"""Only the right parties talk: signed webhooks, verified subscriptions, the destination
guard, tokens, limits. Real HTTP to loopback sinks throughout."""

from __future__ import annotations

import pytest

from broker.guard import CallbackGuard, RefusedDestination
from groker_common.signatures import WebhookVerificationError, new_secret, verify
from groker_common.testing import wait_until

from .conftest import settings_for_tests

PUBLISH, MANAGE = "pub-token-1", "manage-token-1"


def headers_of(sink, index: int = -1) -> dict[str, str]:
    """The webhook-* headers a sink received, as HTTP names."""
    environ = sink.headers[index]
    return {k[5:].lower().replace("_", "-"): v for k, v in environ.items()}


def test_every_delivery_is_signed_with_the_subscriptions_own_secret(client, make_sink):
    sinks = [make_sink(), make_sink()]
    secrets = [client.post("/subscriptions", json={"callback": s.url}).get_json()["secret"]
               for s in sinks]  # fmt: skip
    assert secrets[0] != secrets[1]
    client.post("/messages", json={"body": {"signed": True}, "mode": "sync"})
    for sink, secret in zip(sinks, secrets, strict=True):
        raw = sink.raw[-1]
        verify(secret, raw, headers_of(sink))  # raises if not signed with this secret
        with pytest.raises(WebhookVerificationError):
            verify(new_secret(), raw, headers_of(sink))
        assert headers_of(sink)["webhook-id"] == sink.received[-1]["id"]


def test_publisher_callbacks_are_signed_with_the_shared_secret(make_app, make_sink):
    secret = new_secret()
    client = make_app(settings_for_tests(callback_secret=secret)).test_client()
    subscriber, publisher = make_sink(), make_sink()
    client.post("/subscriptions", json={"callback": subscriber.url})
    client.post("/messages", json={"body": 1, "callback": publisher.url})
    wait_until(lambda: publisher.raw, what="the notification")
    verify(secret, publisher.raw[0], headers_of(publisher))


def test_a_callback_that_does_not_echo_the_challenge_is_not_subscribed(client, make_sink):
    mute = make_sink(echo_challenge=False)
    answer = client.post("/subscriptions", json={"callback": mute.url})
    assert answer.status_code == 422
    assert answer.get_json()["error"] == "callback verification failed"
    down = make_sink()
    url = down.url
    down.server.stop(timeout=0)
    assert client.post("/subscriptions", json={"callback": url}).status_code == 422
    assert client.get("/subscriptions").get_json() == {"subscriptions": []}


@pytest.mark.parametrize(
    ("allowed", "url", "refused"),
    [
        ([], "http://127.0.0.1:9/x", True),  # loopback only when listed
        (["127.0.0.0/8"], "http://127.0.0.1:9/x", False),
        (["0.0.0.0/0"], "http://169.254.169.254/latest/meta-data", True),  # never
        (["::/0"], "http://[fd00:ec2::254]/", True),  # never
        ([], "http://10.1.2.3/", True),  # private, not listed
        (["10.0.0.0/8"], "http://10.1.2.3/", False),
        ([], "http://8.8.8.8/", False),  # public
        ([], "http://[::ffff:169.254.169.254]/", True),  # mapped IPv4 is still link-local
        ([], "http://localhost:9/", True),  # names are resolved first
        (["127.0.0.0/8", "::1/128"], "http://localhost:9/", False),
    ],
)
def test_the_guard_resolves_and_checks_every_address(allowed, url, refused):
    guard = CallbackGuard(allowed)
    if refused:
        with pytest.raises(RefusedDestination):
            guard.check(url)
    else:
        guard.check(url)


def test_refused_destinations_are_refused_at_subscribe_and_publish(make_app):
    client = make_app(settings_for_tests(allowed_networks=[])).test_client()
    for path, payload in [
        ("/subscriptions", {"callback": "http://127.0.0.1:9/hook"}),
        ("/subscriptions", {"callback": "http://169.254.169.254/latest"}),
        ("/messages", {"body": 1, "callback": "http://169.254.169.254/latest"}),
    ]:
        answer = client.post(path, json=payload)
        assert answer.status_code == 403, payload
        assert answer.get_json()["error"] == "callback not allowed"
    assert client.get("/stats").get_json()["accepted"] == 0


def test_tokens_guard_publishing_and_managing(make_app, make_sink):
    app = make_app(settings_for_tests(publish_tokens=[PUBLISH, "pub-2"], manage_tokens=[MANAGE]))
    client = app.test_client()

    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    refused = client.post("/messages", json={"body": 1})
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.post("/messages", json={"body": 1}, headers=auth("nope")).status_code == 401
    assert client.post("/messages", json={"body": 1}, headers=auth(MANAGE)).status_code == 401
    assert client.post("/messages", json={"body": 1}, headers=auth(PUBLISH)).status_code == 202
    assert client.post("/messages", json={"body": 2}, headers=auth("pub-2")).status_code == 202
    sink = make_sink()
    assert client.post("/subscriptions", json={"callback": sink.url}).status_code == 401
    subscribe = client.post("/subscriptions", json={"callback": sink.url}, headers=auth(MANAGE))
    assert subscribe.status_code == 201
    assert client.get("/subscriptions").status_code == 401
    assert client.get("/stats").status_code == 200  # read-only numbers stay open
    assert client.get("/stats").get_json()["accepted"] == 2


def test_rate_limit_answers_429_with_retry_after(make_app):
    client = make_app(settings_for_tests(rate_limit="3/minute")).test_client()
    answers = [client.post("/messages", json={"body": n}).status_code for n in range(4)]
    assert answers == [202, 202, 202, 429]
    limited = client.post("/messages", json={"body": 5})
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.get_json()["error"] == "too many requests"
    assert client.get("/stats").get_json()["accepted"] == 3


def test_too_many_or_too_large_headers_answer_431(client):
    many = {f"X-H-{n}": "v" for n in range(60)}
    answer = client.post("/messages", json={"body": 1}, headers=many)
    assert answer.status_code == 431 and answer.get_json()["error"].startswith("request header")
    huge = {"X-Big": "v" * 20_000}
    assert client.post("/messages", json={"body": 1}, headers=huge).status_code == 431
    assert client.get("/stats").get_json()["accepted"] == 0
