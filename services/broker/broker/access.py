"""Who may call which route, how often, and with how many headers.

Bearer tokens (several per scope, compared in constant time): `publish` for publishing and
polling messages, `manage` for subscriptions. A scope with no tokens configured is open.
Each route declares its scope (operations.route); routes with none are open and not rate
limited. Rate limiting per token (or client address) uses the `limits` library."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Literal

from flask import Flask, Response, current_app, request
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from broker.settings import BrokerSettings
from groker_common.web import error

Scope = Literal["publish", "manage"]


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _valid(token: str | None, allowed: list[str]) -> bool:
    # Compare with every token, always, so timing says nothing about which one was close.
    matches = [hmac.compare_digest(token.encode(), t.encode()) for t in allowed] if token else []
    return any(matches)


class AccessControl:
    """The tokens of each scope and the rate limit, from the settings."""

    def __init__(self, settings: BrokerSettings) -> None:
        self._tokens: dict[Scope, list[str]] = {
            "publish": settings.publish_tokens,
            "manage": settings.manage_tokens,
        }
        self._rate = settings.rate_limit
        self._limiter = FixedWindowRateLimiter(MemoryStorage()) if settings.rate_limit else None
        self._limit = parse(settings.rate_limit) if settings.rate_limit else None

    def refusal(self, scope: Scope) -> Response | None:
        """The answer to a caller without the scope's token (401) or over its rate (429);
        None to let the request through."""
        tokens = self._tokens[scope]
        if tokens and not _valid(_bearer(), tokens):
            response = error(401, "unauthorized", f"a valid {scope} token is required")
            response.headers["WWW-Authenticate"] = 'Bearer realm="groker"'
            return response
        if self._limiter is None or self._limit is None:
            return None
        key = _bearer() or request.remote_addr or "unknown"
        if self._limiter.hit(self._limit, key):
            return None
        reset_at, _ = self._limiter.get_window_stats(self._limit, key)
        wait = max(1, int(reset_at - time.time() + 0.999))
        return error(429, "too many requests", f"limit is {self._rate}", Retry_After=str(wait))


def refusal(scope: Scope) -> Response | None:
    """For the current request: see `AccessControl.refusal`."""
    access: AccessControl = current_app.extensions["groker_access"]
    return access.refusal(scope)


def caller() -> str:
    """Who is calling, as far as scoping their idempotency keys goes: a digest of their
    bearer token (never the token itself, which would then sit in the store), or "-"
    without one."""
    token = _bearer()
    return hashlib.sha256(token.encode()).hexdigest()[:32] if token else "-"


def install_access_control(app: Flask, settings: BrokerSettings) -> None:
    app.extensions["groker_access"] = AccessControl(settings)

    @app.before_request
    def _check_headers():
        # gunicorn's own limits (431 too, but not JSON) sit above these as a backstop.
        if len(request.headers) > settings.max_header_count:
            return error(431, "request header fields too large",
                         f"at most {settings.max_header_count} headers")  # fmt: skip
        size = sum(len(k) + len(v) + 4 for k, v in request.headers.items())
        if size > settings.max_header_bytes:
            return error(431, "request header fields too large",
                         f"at most {settings.max_header_bytes} bytes of headers")  # fmt: skip
        return None
