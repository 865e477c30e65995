"""Receiving a groker webhook delivery, the one way every subscriber does it: the example
client's Flask route and `groker subscribe`'s stdlib server both hand the raw POST to a
`WebhookReceiver` and send back the (status, JSON) it answers.

It answers the broker's subscription challenge, checks the Standard Webhooks signature,
validates the delivery's envelope (or, for a subscription with `format: cloudevents`,
reads its CloudEvents: cloudevent_deliveries.py) and drops repeated deliveries by message
id (an event's: source and id). It knows no web framework and no concurrency library, so
that each caller keeps its own transport (Flask under gevent, a threading HTTP server) and
the rules cannot drift apart again."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Protocol

from groker_common.signatures import WebhookVerificationError, verify

# (HTTP status, JSON answer): what the caller sends back to the broker.
Answer = tuple[int, dict[str, Any]]

# Ids remembered to drop repeats: a repeat comes from a broker restarting mid-delivery, so
# it arrives soon after the original.
RECENT_IDS = 10_000
# The content types of CloudEvents deliveries: one structured event, or a batch of them.
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"


def error_answer(status: int, message: str, detail: Any = None) -> Answer:
    """groker's one error shape, {"error": ..., "detail": ...}, without Flask's help."""
    return status, {"error": message, "detail": detail}


def challenge_answer(message: Any) -> Answer | None:
    """The answer to the broker's subscription challenge (intent verification: before it
    subscribes a callback, the broker asks whether it wants deliveries), or None when
    `message` is not one. It comes before the subscribe answer and its secret, so it is
    never signed."""
    if not (isinstance(message, dict) and message.get("type") == "subscription.verify"):
        return None
    challenge = message.get("challenge")
    if not isinstance(challenge, str):
        return error_answer(400, "invalid verification request", "challenge must be a string")
    return 200, {"challenge": challenge}


def challenge_echo(raw: bytes) -> bytes | None:
    """The body a willing subscriber answers (with 200) to the broker's challenge, or None
    when `raw` is not a well-formed one: for the minimal receivers of the tests."""
    try:
        answer = challenge_answer(json.loads(raw))
    except ValueError:
        return None
    if answer is None or answer[0] != 200:
        return None
    return json.dumps(answer[1]).encode()


def is_delivery(message: Any) -> bool:
    """The broker's delivery envelope: a JSON object with a string `id`, an integer `seq`
    (not a boolean, which Python counts as one) and a `body`."""
    return (
        isinstance(message, dict)
        and isinstance(message.get("id"), str)
        and isinstance(message.get("seq"), int)
        and not isinstance(message.get("seq"), bool)
        and "body" in message
    )


def cloudevents_kind(headers: Mapping[str, str]) -> str | None:
    """How a POST carries CloudEvents: "batch", "event" (structured by its content type,
    binary by its ce-specversion header), or None when it is groker's envelope."""
    lowered = {name.lower(): value for name, value in headers.items()}
    media = lowered.get("content-type", "").split(";")[0].strip().lower()
    if media == BATCH:
        return "batch"
    if media == STRUCTURED or "ce-specversion" in lowered:
        return "event"
    return None


@dataclass(frozen=True)
class Deliveries:
    """What one POST brought: its messages, whether they came as an array (a batch), and
    what tells each one's repeats (its id; a CloudEvent's source and id, which the spec
    says identify an event)."""

    messages: list[dict[str, Any]]
    batch: bool
    identities: list[Hashable]


def _envelopes(message: Any) -> Deliveries | Answer:
    # A subscriber that takes batches (max_batch > 1) gets arrays, in seq order.
    batch = message if isinstance(message, list) else [message]
    if not batch or not all(is_delivery(m) for m in batch):
        return error_answer(
            400,
            "invalid delivery",
            "expected a JSON object with id, seq and body, or a non-empty array of them",
        )
    return Deliveries(batch, isinstance(message, list), [m["id"] for m in batch])


def _cloudevents(raw: bytes, headers: Mapping[str, str], kind: str) -> Deliveries | Answer:
    try:
        # Here, not at the top: only a CloudEvents subscriber needs the SDK (see
        # cloudevent_deliveries.py).
        from groker_common.cloudevent_deliveries import InvalidDelivery, read_events
    except ImportError:
        return error_answer(415, "unsupported delivery", "no CloudEvents SDK installed here")
    try:
        events = read_events(raw, headers, batch=kind == "batch")
    except InvalidDelivery as exc:
        return error_answer(400, "invalid delivery", str(exc))
    identities: list[Hashable] = [(e["cloudevent"]["source"], e["id"]) for e in events]
    return Deliveries(events, kind == "batch", identities)


class NotSubscribedYet(Exception):
    """No answer to our subscribe request came in time, so no secret to check with: the
    delivery is refused with 503, which the broker retries."""


class SecretHolder(Protocol):
    """Where a receiver finds the secret deliveries must be signed with: the broker's
    answer to our subscribe request. A delivery can beat that answer (the broker starts
    delivering as soon as it has registered us), hence the two ways to ask."""

    @property
    def secret(self) -> str | None:
        """The secret held now, without waiting."""
        ...

    def settled_secret(self) -> str | None:
        """The secret once no subscribe call is under way, waiting for one if need be;
        may raise NotSubscribedYet."""
        ...


def _signature_problem(secret: str | None, raw: bytes, headers: Any) -> str | None:
    """Why `raw` is not signed with `secret`, or None when it is."""
    if secret is None:
        return "no signing secret to check the signature with"
    try:
        verify(secret, raw, headers)
    except WebhookVerificationError as exc:
        return str(exc) or type(exc).__name__
    return None


def _ignore(*_args: Any) -> None:
    return None


@dataclass(eq=False)
class WebhookReceiver:
    """Takes the broker's POSTs to one subscriber and answers each.

    `secrets` None: signatures are not checked. `require_signature` False: when the broker
    gave no secret (it does not sign), unsigned deliveries are taken. `on_message` gets
    every new delivery, one at a time, in arrival order; `on_bad_signature` the reason a
    delivery was refused. `before_taking` may answer a valid delivery instead (the client's
    fault injection). `signature_error` is the `error` of the 401 answer."""

    secrets: SecretHolder | None
    on_message: Callable[[dict[str, Any]], None]
    on_bad_signature: Callable[[str], None] = _ignore
    _: KW_ONLY
    require_signature: bool = True
    before_taking: Callable[[dict[str, Any]], Answer | None] | None = None
    recent_ids: int = RECENT_IDS
    signature_error: str = "invalid signature"
    received: int = field(default=0, init=False)
    duplicates: int = field(default=0, init=False)
    bad_signatures: int = field(default=0, init=False)
    _seen: OrderedDict[Hashable, None] = field(default_factory=OrderedDict, init=False, repr=False)

    def __post_init__(self) -> None:
        # Held while a delivery is taken, so that on_message sees the arrival order. Made
        # here, not at import, so that it is gevent's lock where gevent has patched threading.
        self._lock = threading.Lock()

    def handle(self, raw: bytes, headers: Mapping[str, str]) -> Answer:
        """Answer one POST: the status and JSON the broker gets back."""
        kind = cloudevents_kind(headers)
        message: Any = None
        # The challenge is always groker's JSON; a binary event's data may only look like it.
        if kind is None:
            try:
                message = json.loads(raw)
            except ValueError as exc:  # includes UnicodeDecodeError
                return error_answer(400, "malformed JSON", str(exc))
            challenge = challenge_answer(message)
            if challenge is not None:
                return challenge
        refusal = self._signature_refusal(raw, headers)
        if refusal is not None:
            return refusal
        read = _envelopes(message) if kind is None else _cloudevents(raw, headers, kind)
        if not isinstance(read, Deliveries):
            return read
        for item in read.messages:
            instead = self.before_taking(item) if self.before_taking else None
            if instead is not None:
                return instead
        taken = zip(read.messages, read.identities, strict=True)
        answers = [self._take(item, identity) for item, identity in taken]
        if not read.batch:
            return answers[0]
        repeats = sum(1 for _, answer in answers if answer["duplicate"])
        return 200, {"ok": True, "received": len(answers) - repeats, "duplicates": repeats}

    def _signature_refusal(self, raw: bytes, headers: Any) -> Answer | None:
        """None when the delivery may be taken; else the answer that refuses it. The secret
        held is tried first; only if it fails, the one a subscribe under way brings."""
        if self.secrets is None:
            return None
        held = self.secrets.secret
        problem = _signature_problem(held, raw, headers)
        if problem is None:
            return None
        try:
            settled = self.secrets.settled_secret()
        except NotSubscribedYet as exc:
            return error_answer(503, "not subscribed yet", str(exc))
        if settled is None and not self.require_signature:
            return None  # a broker that does not sign
        if settled != held:
            problem = _signature_problem(settled, raw, headers)
            if problem is None:
                return None
        self.bad_signatures += 1
        self.on_bad_signature(problem)
        return error_answer(401, self.signature_error, problem)

    def _take(self, message: dict[str, Any], identity: Hashable) -> Answer:
        with self._lock:
            if identity in self._seen:
                self.duplicates += 1
                return 200, {"ok": True, "duplicate": True}
            self._seen[identity] = None
            if len(self._seen) > self.recent_ids:
                self._seen.popitem(last=False)
            self.received += 1
            self.on_message(message)
        return 200, {"ok": True, "duplicate": False}
