"""The handler registry: handler ids, their functions, and typed inputs."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .errors import InvalidArgument

HandlerFn = Callable[..., Awaitable[Any]]
MAX_ID_LENGTH = 1024


def check_id(value: object, what: str) -> str:
    """Validate an id given by a caller: a non-empty str, no NUL, at most 1024 characters.

    Ids are stored and matched as plain strings; anything else (a dict such as
    ``{"$ne": None}``) is rejected here, never passed to a query.
    """
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a str, got {type(value).__name__} {value!r:.80}")
    if not value:
        raise InvalidArgument(f"{what} must not be empty")
    if "\x00" in value:
        raise InvalidArgument(f"{what} must not contain NUL characters: {value!r:.80}")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{what} is {len(value):,} characters long; at most {MAX_ID_LENGTH} are allowed")
    return value


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A registered handler and, if its ``input`` parameter is annotated, how to validate input."""

    handler_id: str
    fn: HandlerFn
    input_adapter: TypeAdapter[Any] | None

    def validate_input(self, value: Any, workflow_id: str) -> Any:
        """Validate (and convert) ``value`` for this handler; raise ``InvalidArgument`` with pydantic's message."""
        if self.input_adapter is None:
            return value
        try:
            return self.input_adapter.validate_python(value)
        except ValidationError as exc:
            raise InvalidArgument(
                f"input of workflow {workflow_id!r} does not fit handler {self.handler_id!r}: {exc}"
            ) from None

    def dump_input(self, value: Any) -> Any:
        """The JSON-like form of validated input, for storage."""
        if self.input_adapter is None:
            return value
        return self.input_adapter.dump_python(value, mode="json")


def make_spec(handler_id: str, fn: Any) -> HandlerSpec:
    """Check a handler function and read its input annotation."""
    check_id(handler_id, "handler id")
    if not callable(fn):
        raise InvalidArgument(f"handler {handler_id!r} must be an async function, got {type(fn).__name__}")
    call = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn).__call__
    if not (inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)):
        raise InvalidArgument(
            f"handler {handler_id!r} must be an async function (async def {getattr(fn, '__name__', 'handler')}"
            "(ctx, input): ...); a plain function cannot await ctx.step"
        )
    return HandlerSpec(handler_id, fn, _input_adapter(handler_id, fn))


def _input_adapter(handler_id: str, fn: Any) -> TypeAdapter[Any] | None:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if len(params) < 2:
        return None
    if params[1].annotation is inspect.Parameter.empty:
        return None
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn).__call__
    try:
        hints = typing.get_type_hints(target)
    except Exception as exc:
        raise InvalidArgument(
            f"handler {handler_id!r}: cannot resolve the annotation of its input parameter "
            f"{params[1].name!r} ({exc}). Define the input type at module level (not inside a function), "
            "or remove the annotation to skip input validation."
        ) from None
    annotation = hints.get(params[1].name)
    if annotation is None or annotation is Any:
        return None
    return TypeAdapter(annotation)


class Workflow:
    """Base class for the class-based form of a handler.

    >>> class Checkout(Workflow):
    ...     handler_id = "checkout"
    ...     async def run(self, ctx, input):
    ...         return await ctx.step("charge", lambda: self.env["payments"].charge(input))

    ``engine.register(Checkout)`` creates one instance per engine and sets its
    ``env`` to the engine's ``env`` (shared dependencies: clients, settings).
    ``handler_id`` defaults to the class name.
    """

    handler_id: str | None = None
    env: Any = None

    async def run(self, ctx: Any, input: Any) -> Any:
        """The handler body: override it (``async def run(self, ctx, input)``)."""
        raise NotImplementedError(f"{type(self).__qualname__} must define async def run(self, ctx, input)")
