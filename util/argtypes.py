"""argparse `type=` functions and a parser whose errors are one line naming the flag.

Every float type refuses NaN and infinity, which Python's float() accepts ("nan", "inf") and which
would otherwise flow silently into poses, learning rates and timers.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn

MAX_SEED = 2**32 - 1  # every generator the project seeds (Python, NumPy, torch) accepts 0 .. 2**32 - 1


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        kind_name = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {kind_name}, got '{text}'") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
    return value


def _at_least(text: str, kind: type, low: float, strict: bool = False) -> float | int:
    value = _number(text, kind)
    if value < low or (strict and value == low):
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what} {'>' if strict else '>='} {low:g}, got {text}")
    return value


def finite_float(text: str) -> float:
    """A finite float."""
    return float(_number(text, float))


def non_negative_float(text: str) -> float:
    """A finite float >= 0."""
    return float(_at_least(text, float, 0.0))


def positive_float(text: str) -> float:
    """A finite float > 0."""
    return float(_at_least(text, float, 0.0, strict=True))


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    value = float(_at_least(text, float, 0.0))
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return int(_at_least(text, int, 1))


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return int(_at_least(text, int, 0))


def seed(text: str) -> int:
    """A random seed in 0 .. 2**32 - 1."""
    value = int(_number(text, int))
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer in 0..{MAX_SEED}, got {text}")
    return value


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose error is one line naming the flag (the usage block is what --help is for)."""

    def error(self, message: str) -> NoReturn:
        sys.stdout.flush()
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
