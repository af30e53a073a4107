"""What every lowering shares: tile arithmetic and the error for what does not fit."""

from __future__ import annotations

__all__ = ["DoesNotFit", "ceil_div"]


class DoesNotFit(ValueError):
    """A program does not fit the core's memories; the message says what and by how much."""


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for integers, ``b > 0``: tiles of ``b`` needed to cover ``a``."""
    return -(-a // b)
