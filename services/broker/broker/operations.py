"""Each HTTP operation declared once, where its route is: the path and method, the scope a
caller's token needs, the request model and the answers. The route is registered from that
declaration, access is checked from it (access.py), and the OpenAPI document is generated
from it (openapi.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

from flask import Blueprint
from pydantic import BaseModel

from broker.access import Scope, refusal


@dataclass(frozen=True)
class Documented:
    """One documented answer: a description and what its body is."""

    description: str
    model: type[BaseModel] | None = None  # a JSON body of this model
    content_type: str | None = None  # or a body of this type, described by its schema
    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    replies: dict[int, Documented]
    scope: Scope | None = None
    request: type[BaseModel] | None = None
    # Request bodies of other media types (a CloudEvent), each described by its schema.
    other_requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The request headers the operation reads, as a model whose fields' aliases name them.
    headers: type[BaseModel] | None = None
    # Error answers this operation can give besides those every operation can (431, and
    # 401/429 for one that needs a token); described in openapi.ERRORS.
    errors: tuple[int, ...] = ()
    parameters: tuple[str, ...] = field(default=())
    description: str | None = None


OPERATIONS: list[Operation] = []
PATH_PARAMETER = re.compile(r"<(?:[^:>]+:)?([^>]+)>")


def declare(operation: Operation) -> Operation:
    """Add an operation to the API's declarations (routes registered elsewhere use this
    directly: the health and metrics routes shared by every service)."""
    OPERATIONS.append(operation)
    return operation


def route(
    blueprint: Blueprint,
    method: str,
    path: str,
    replies: dict[int, Documented],
    scope: Scope | None = None,
    request: type[BaseModel] | None = None,
    headers: type[BaseModel] | None = None,
    errors: tuple[int, ...] = (),
    operation_id: str | None = None,
    other_requests: dict[str, dict[str, Any]] | None = None,
    description: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare an operation and register its view on `blueprint`; with a scope, the view
    runs only for a caller whose token has it (and within the rate limit)."""

    def register(view: Callable[..., Any]) -> Callable[..., Any]:
        # Flask's <name> or <converter:name> is OpenAPI's {name}.
        parameters = tuple(PATH_PARAMETER.findall(path))
        declare(
            Operation(
                method=method.lower(),
                path=PATH_PARAMETER.sub(r"{\1}", path),
                operation_id=operation_id or view.__name__,
                replies=replies,
                scope=scope,
                request=request,
                other_requests=other_requests or {},
                headers=headers,
                errors=errors,
                parameters=parameters,
                description=description,
            )
        )
        guarded = view if scope is None else _requiring(scope, view)
        blueprint.add_url_rule(path, view.__name__, guarded, methods=[method])
        return view

    return register


def _requiring(scope: Scope, view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        refused = refusal(scope)
        return refused if refused is not None else view(*args, **kwargs)

    return guarded
