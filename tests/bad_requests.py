"""Malformed and hostile requests, each with the status and error the broker must answer.

Shared by the broker's unit tests (Flask test client) and the end-to-end tests (the live
broker in compose): (method, path, raw body, content type, status, error)."""

import json

BIG = 2 * 1024 * 1024
J = "application/json"
MANY_HEADERS = {f"h{i}": "v" * 100 for i in range(2000)}
LONG_HEADER = {"h": "v" * 5000}
LONG_NAME = {"h" * 200: "v"}
BAD_INPUTS = [
    # (method, path, raw body, content type, expected status, expected error)
    ("POST", "/messages", "{not json", J, 400, "malformed JSON"),
    ("POST", "/messages", "", J, 400, "malformed JSON"),
    ("POST", "/messages", '{"body": 1,}', J, 400, "malformed JSON"),
    ("POST", "/messages", "[1, 2]", J, 400, "invalid request"),
    ("POST", "/messages", '"just a string"', J, 400, "invalid request"),
    ("POST", "/messages", "{}", J, 400, "invalid request"),
    ("POST", "/messages", '{"mode": "sync"}', J, 400, "invalid request"),
    ("POST", "/messages", '{"body": 1, "mode": "later"}', J, 400, "invalid request"),
    ("POST", "/messages", '{"body": 1, "mode": 1}', J, 400, "invalid request"),
    ("POST", "/messages", '{"body": 1, "callback": "not a url"}', J, 400, "invalid request"),
    ("POST", "/messages", '{"body": 1, "callback": "/relative"}', J, 400, "invalid request"),
    ("POST", "/messages", '{"body": 1, "callback": "ftp://h/x"}', J, 400, "invalid request"),
    ("POST", "/messages", '{"body": 1, "callback": "http://"}', J, 400, "invalid request"),
    ("POST", "/messages", '{"body": 1, "callback": "http://u:p@h/"}', J, 400, "invalid request"),
    ("POST", "/messages", '{"body": 1, "callback": "http://h:99999/"}', J, 400, "invalid request"),
    ("POST", "/messages", '{"body": 1, "callback": 42}', J, 400, "invalid request"),
    (
        "POST",
        "/messages",
        '{"body": 1, "callback": "http://h/' + "a" * 3000 + '"}',
        J,
        400,
        "invalid request",
    ),
    (
        "POST",
        "/messages",
        '{"body": 1, "mode": "sync", "callback": "http://h/"}',
        J,
        400,
        "invalid request",
    ),
    ("POST", "/messages", '{"body": 1, "headers": ["a"]}', J, 400, "invalid request"),
    ("POST", "/messages", '{"body": 1, "headers": {"a": 1}}', J, 400, "invalid request"),
    ("POST", "/messages", '{"body": 1, "surprise": true}', J, 400, "invalid request"),
    ("POST", "/messages", '{"body": "' + "x" * BIG + '"}', J, 413, "request entity too large"),
    ("POST", "/messages", '{"body": 1}', "text/plain", 415, "unsupported media type"),
    (
        "POST",
        "/messages",
        "body=1",
        "application/x-www-form-urlencoded",
        415,
        "unsupported media type",
    ),
    ("GET", "/messages/no-such-id", None, None, 404, "not found"),
    ("PUT", "/messages", '{"body": 1}', J, 405, "method not allowed"),
    ("DELETE", "/messages/x", None, None, 405, "method not allowed"),
    ("POST", "/subscriptions", "{", J, 400, "malformed JSON"),
    ("POST", "/subscriptions", "{}", J, 400, "invalid request"),
    ("POST", "/subscriptions", '{"callback": null}', J, 400, "invalid request"),
    ("POST", "/subscriptions", '{"callback": "javascript:alert(1)"}', J, 400, "invalid request"),
    ("POST", "/subscriptions", '{"callback": "http://h/\\r\\nX: y"}', J, 400, "invalid request"),
    (
        "POST",
        "/subscriptions",
        '{"callback": "http://h/"}',
        "text/plain",
        415,
        "unsupported media type",
    ),
    ("DELETE", "/subscriptions/no-such-id", None, None, 404, "not found"),
    ("GET", "/subscriptions/no-such-id", None, None, 404, "not found"),
    ("PATCH", "/subscriptions", "{}", J, 405, "method not allowed"),
    ("GET", "/no/such/route", None, None, 404, "not found"),
    ("POST", "/messages", '{"body": 1, "callback": "http://[::1"}', J, 400, "invalid request"),
    (
        "POST",
        "/messages",
        '{"body": 1, "callback": "file:///etc/passwd"}',
        J,
        400,
        "invalid request",
    ),
    ("POST", "/messages", '{"body": 1, "callback": "gopher://h:70/"}', J, 400, "invalid request"),
    ("POST", "/messages", '{"body": 1, "callback": "http://h:0/"}', J, 400, "invalid request"),
    ("POST", "/messages", '{"body": 1, "headers": null}', J, 400, "invalid request"),
    ("POST", "/messages", '{"body": 1, "mode": null}', J, 400, "invalid request"),
    ("POST", "/subscriptions", '{"callback": ["http://h/"]}', J, 400, "invalid request"),
    ("POST", "/subscriptions", '{"callback": "http://h/", "x": 1}', J, 400, "invalid request"),
    # Not JSON by RFC 8259, though Python's parsers take them: never accepted, never delivered.
    ("POST", "/messages", '{"body": {"a": NaN}}', J, 400, "invalid request"),
    ("POST", "/messages", '{"body": [Infinity]}', J, 400, "invalid request"),
    ("POST", "/messages", '{"body": -Infinity, "mode": "sync"}', J, 400, "invalid request"),
    ("POST", "/messages", '{"body": {"b": 1e999999}}', J, 400, "invalid request"),
    # Headers are kept while queued and sent with every delivery: bounded.
    (
        "POST",
        "/messages",
        json.dumps({"body": 1, "headers": MANY_HEADERS}),
        J,
        400,
        "invalid request",
    ),
    (
        "POST",
        "/messages",
        json.dumps({"body": 1, "headers": LONG_HEADER}),
        J,
        400,
        "invalid request",
    ),
    ("POST", "/messages", json.dumps({"body": 1, "headers": LONG_NAME}), J, 400, "invalid request"),
    # Batches: nothing of a batch with one bad message is accepted.
    ("POST", "/messages/batch", '{"messages": []}', J, 400, "invalid request"),
    ("POST", "/messages/batch", '{"messages": {"body": 1}}', J, 400, "invalid request"),
    (
        "POST",
        "/messages/batch",
        '{"messages": [{"body": 1}, {"body": NaN}]}',
        J,
        400,
        "invalid request",
    ),
    ("POST", "/messages/batch", '{"messages": [{"body": 1}, {"x": 1}]}', J, 400, "invalid request"),
    (
        "POST",
        "/messages/batch",
        json.dumps({"messages": [{"body": 1}] * 1001}),
        J,
        400,
        "invalid request",
    ),
    (
        "POST",
        "/messages/batch",
        '{"messages": [{"body": 1}], "mode": "sync", "callback": "http://h/"}',
        J,
        400,
        "invalid request",
    ),
    (
        "POST",
        "/messages/batch",
        '{"messages": [{"body": 1}]}',
        "text/plain",
        415,
        "unsupported media type",
    ),
]

# Idempotency-Key headers that are refused: (key, raw body, expected status, expected error).
# FIRST_KEYED is published (with that key and body) before them, so that the last row reuses
# a key that is bound to another request.
FIRST_KEYED = ("bad-requests-bound-key", '{"body": "the first"}')
BAD_KEYS = [
    ("", '{"body": 1}', 400, "invalid request"),
    ("k" * 256, '{"body": 1}', 400, "invalid request"),
    (FIRST_KEYED[0], '{"body": "another"}', 422, "idempotency key reused"),
    (FIRST_KEYED[0], '{"body": "the first", "mode": "sync"}', 422, "idempotency key reused"),
]
