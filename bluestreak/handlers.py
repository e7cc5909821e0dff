"""The handler registry: handler ids, their functions, and typed inputs."""

from __future__ import annotations

import contextlib
import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .codec import storable
from .errors import InvalidArgument

HandlerFn = Callable[..., Awaitable[Any]]
MAX_ID_LENGTH = 1024


def check_id(value: object, what: str) -> str:
    """Validate an id given by a caller: a non-empty str of valid Unicode, no NUL, at most 1024 characters.

    Ids are stored and matched as plain strings; anything else (a dict such as
    ``{"$ne": None}``) is rejected here, never passed to a query. A lone
    surrogate (``"\\udc80"``, what ``surrogateescape`` makes of a stray byte)
    cannot be encoded as UTF-8, so it is rejected here too.
    """
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a str, got {type(value).__name__} {_shown(value)}")
    if not value:
        raise InvalidArgument(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{what} is {len(value):,} characters long; at most {MAX_ID_LENGTH} are allowed")
    if "\x00" in value:
        raise InvalidArgument(f"{what} must not contain NUL characters: {_shown(value)}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(
                f"{what} contains a lone surrogate (not valid Unicode): {_shown(value)}; ids must be valid UTF-8"
            ) from None
    return value


def _shown(value: object) -> str:
    """A short, printable, always-encodable repr for an error message."""
    text = repr(value)
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= 80 else f"{text[:77]}..."


_HANDLER_ID = "__bluestreak_handler_id__"


def name_handler(target: Any, handler_id: str) -> None:
    """Remember on a registered function (or Workflow class) the id it was registered under."""
    fn = getattr(target, "__func__", target)  # a bound method: its function
    with contextlib.suppress(AttributeError, TypeError):  # a callable that takes no attributes: pass its id
        setattr(fn, _HANDLER_ID, handler_id)


def handler_id_of(handler: object) -> str:
    """The handler id ``start`` was given: the id itself, or what a registered function was registered as."""
    if isinstance(handler, str) or not callable(handler):
        return check_id(handler, "handler id")  # refuses what is not a str
    found = getattr(getattr(handler, "__func__", handler), _HANDLER_ID, None)
    if isinstance(found, str):
        return found
    raise InvalidArgument(
        f"{getattr(handler, '__qualname__', type(handler).__name__)} is not a registered handler: register it with "
        "@engine.handler('id') (on any engine) before starting it, or pass its handler id as a str"
    )


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
                f"the input of workflow {workflow_id!r} does not fit handler {self.handler_id!r}: "
                f"{describe_validation(exc)}"
            ) from None

    def dump_input(self, value: Any) -> Any:
        """The storable form of validated input (bytes and datetimes as BSON has them; the rest as JSON)."""
        if self.input_adapter is None:
            return value
        return storable(self.input_adapter.dump_python(value, mode="python"))


def describe_validation(exc: ValidationError) -> str:
    """Pydantic's errors by field and type, without the values (an input may hold secrets)."""
    parts = []
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    for err in errors[:10]:
        where = ".".join(str(p) for p in err["loc"]) or "the value"
        parts.append(f"{where}: {err['msg']} [{err['type']}]")
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return f"{len(errors)} validation error{'s' if len(errors) != 1 else ''}: " + "; ".join(parts) + more


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
