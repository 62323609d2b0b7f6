"""Errors the user can fix, and how the command lines report them.

Raise a `UserError` (or one of its kinds) with one paragraph that names the bad value and the
fix. The CLIs wrap their Hydra task in `report_user_errors`, so such an error prints as that
paragraph alone instead of a traceback (Hydra adds one line about HYDRA_FULL_ERROR=1, which
still gives the full trace). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from hydra.errors import CompactHydraException
from omegaconf import ListConfig


class UserError(Exception):
    """Bad input or a bad environment that the user can fix; the message says how."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or directory the config points at is missing or empty."""


class UnavailableInputError(UserError, RuntimeError):
    """Input that cannot be fetched here (offline machine, unreachable URL)."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be loaded, written, or does not fit the config."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss became NaN or infinite."""


class _Reported(CompactHydraException):
    """Hydra prints a CompactHydraException as its message only, without a traceback."""


def find_user_error(err: BaseException | None) -> UserError | None:
    """The UserError behind `err`, also when a wrapper (hydra.utils.instantiate) re-raised it."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def report_user_errors(task: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a Hydra task function (below `@hydra.main`) to print UserErrors as one paragraph."""

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except Exception as err:
            user_error = find_user_error(err)
            if user_error is None:
                raise
            raise _Reported(f"Error: {user_error}") from None

    return wrapper


def _shown(value: Any) -> str:
    """A value the way the user typed it on the command line: null, true, 0.5, 'abc'."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value) if isinstance(value, str) else str(value)


def check_value(
    key: str,
    value: Any,
    kind: type,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[str, ...] | None = None,
    null: str | None = None,
    fix: str = "",
) -> None:
    """Raise a ConfigError naming `key` unless `value` is a `kind` (bool, int, float or a non-empty
    str) within the bounds (ge: >=, gt: >, le: <=, lt: <) or among `choices`; null is allowed
    only where `null` says what it means. For plugin arguments, which have no typed schema: Hydra
    hands a constructor whatever was typed (`data.val_fraction=abc` arrives as the str 'abc')."""
    if value is None and null is not None:
        return
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a non-empty string"}
    bounds = [f"{op} {b}" for op, b in ((">=", ge), (">", gt), ("<=", le), ("<", lt)) if b is not None]
    wanted = f"one of {', '.join(choices)}" if choices else " ".join([names[kind], " and ".join(bounds)]).strip()
    if null is not None:
        wanted += f", or null ({null})"
    # bool is an int to Python, and an int is a fine float; neither the other way round
    if isinstance(value, bool):
        right_type = kind is bool
    else:
        right_type = isinstance(value, kind) or (kind is float and isinstance(value, int))
    if not right_type:
        typed = (
            "a list" if isinstance(value, (list, ListConfig)) else "a mapping" if isinstance(value, Mapping) else None
        )
        name = type(value).__name__
        problem = "is not allowed" if value is None else f"is {typed or ('an ' if name[0] in 'aeiou' else 'a ') + name}"
    elif choices is not None:
        problem = "is unknown"
        if value in choices:
            return
    elif kind is str:
        problem = "is empty"
        if value:
            return
    else:
        problem = "is out of range"
        in_range = value == value  # NaN is in no range
        in_range = in_range and (ge is None or value >= ge) and (gt is None or value > gt)
        if in_range and (le is None or value <= le) and (lt is None or value < lt):
            return
    raise ConfigError(f"{key}={_shown(value)} {problem}: it must be {wanted}. {fix}".strip())
