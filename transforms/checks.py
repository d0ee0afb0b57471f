"""Argument checks for the transforms' constructors: a wrong argument fails where the
pipeline is built, with the argument named, not in a worker at run time."""
from __future__ import annotations

from typing import Any


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    return value


def non_empty_str(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, not {value!r}")
    return value


def optional_str(name: str, value: Any) -> str | None:
    return None if value is None else non_empty_str(name, value)
