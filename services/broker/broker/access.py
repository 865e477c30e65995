"""Who may call which route, how often, and with how many headers.

Bearer tokens (several per scope, compared in constant time): `publish` for publishing and
polling messages, `manage` for subscriptions. A scope with no tokens configured is open.
Rate limiting per token (or client address) uses the `limits` library."""

from __future__ import annotations

import hmac
import time

from flask import Flask, request
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from broker.settings import BrokerSettings
from groker_common.web import error

# endpoint -> scope; endpoints not listed (health, stats, dashboard) are open
SCOPES = {
    "api.publish": "publish",
    "api.get_message": "publish",
    "api.subscribe": "manage",
    "api.list_subscriptions": "manage",
    "api.get_subscription": "manage",
    "api.unsubscribe": "manage",
}


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _valid(token: str | None, allowed: list[str]) -> bool:
    # Compare with every token, always, so timing says nothing about which one was close.
    matches = [hmac.compare_digest(token.encode(), t.encode()) for t in allowed] if token else []
    return any(matches)


def install_access_control(app: Flask, settings: BrokerSettings) -> None:
    tokens = {"publish": settings.publish_tokens, "manage": settings.manage_tokens}
    limiter = FixedWindowRateLimiter(MemoryStorage()) if settings.rate_limit else None
    limit = parse(settings.rate_limit) if settings.rate_limit else None

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

    @app.before_request
    def _check_token():
        scope = SCOPES.get(request.endpoint or "")
        if scope is None or not tokens[scope]:
            return None
        if _valid(_bearer(), tokens[scope]):
            return None
        response = error(401, "unauthorized", f"a valid {scope} token is required")
        response.headers["WWW-Authenticate"] = 'Bearer realm="groker"'
        return response

    @app.before_request
    def _check_rate():
        if limiter is None or limit is None or request.endpoint not in SCOPES:
            return None
        key = _bearer() or request.remote_addr or "unknown"
        if limiter.hit(limit, key):
            return None
        reset_at, _ = limiter.get_window_stats(limit, key)
        wait = max(1, int(reset_at - time.time() + 0.999))
        return error(429, "too many requests", f"limit is {settings.rate_limit}",
                     Retry_After=str(wait))  # fmt: skip
