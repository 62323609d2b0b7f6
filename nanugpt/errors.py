"""Errors the user can fix, and how the command lines report them.

Raise a `UserError` (or one of its kinds) with one paragraph that names the bad value and the
fix. The CLIs wrap their Hydra task in `report_user_errors`, so such an error prints as that
paragraph alone instead of a traceback (Hydra adds one line about HYDRA_FULL_ERROR=1, which
still gives the full trace). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from hydra.errors import CompactHydraException


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


def check_range(
    key: str,
    value: Any,
    low: float,
    high: float = math.inf,
    *,
    fix: str,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> None:
    """Raise a ConfigError naming `key=value`, the range it must lie in and `fix`, unless `value`
    is a number (an int when `integer`) between `low` and `high` (each bound included unless open)."""
    kinds = int if integer else (int, float)
    ok = (
        isinstance(value, kinds)
        and not isinstance(value, bool)
        and (low < value if low_open else low <= value)
        and (value < high if high_open else value <= high)
    )
    if ok:
        return
    if high == math.inf:
        rule = f"{'>' if low_open else '>='} {low:g}"
    elif low == -math.inf:
        rule = f"{'<' if high_open else '<='} {high:g}"
    else:
        rule = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    raise ConfigError(f"{key}={value!r} must be {'an integer' if integer else 'a number'} {rule}. {fix}")


def check_choice(key: str, value: Any, choices: tuple[Any, ...], *, fix: str) -> None:
    """Raise a ConfigError naming `key=value`, the choices and `fix`, unless `value` is one of `choices`."""
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, choices))}. {fix}")
