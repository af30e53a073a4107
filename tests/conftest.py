"""Shared test fixtures.

Random tests take their seed from the :func:`seed` fixture: a fresh seed per test,
printed with the test's name, or the value of ``FXPGEN_SEED`` to replay a failure
(``FXPGEN_SEED=1234 python -m pytest tests/test_x.py -k name``).
"""

from __future__ import annotations

import os
import random

import pytest

SEED_ENV = "FXPGEN_SEED"


def pytest_report_header(config):
    fixed = os.environ.get(SEED_ENV)
    return f"random tests: {'seed ' + fixed + ' from ' + SEED_ENV if fixed else 'fresh seeds (printed per test)'}"


@pytest.fixture
def seed(request) -> int:
    """The seed of one random test: ``$FXPGEN_SEED`` if set, else a fresh one. It is
    printed (shown with the output of a failing test) with the command to replay it."""
    fixed = os.environ.get(SEED_ENV)
    value = int(fixed) if fixed else random.randrange(2 ** 32)
    print(f"{request.node.nodeid}: seed {value} (replay with {SEED_ENV}={value})")
    return value
