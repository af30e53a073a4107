"""Ray, for the commands that fan work out (``fxpgen sweep``, ``fxpgen eval``): the one
module that imports it.

A local Ray instance by default (``num_cpus`` workers on this machine), or an
existing cluster by its address (``ray start --head`` prints it). Tasks are plain
functions; a task that raises or whose worker dies comes back as a failure with
the tail of its log, never lost.

    with ray_session(address=None, num_cpus=2):
        for key, value in fan_out(measure_point, {"4x4": (point, ...)}):
            ...
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import traceback
from typing import Any, Callable, Iterator

__all__ = ["MissingExtra", "EXTRA", "require_ray", "ray_session", "fan_out", "TaskFailed",
           "LOG_TAIL_LINES"]

#: The optional dependency group that installs Ray.
EXTRA = "scale"

#: Lines of a failed task's log kept in its report.
LOG_TAIL_LINES = 20


class MissingExtra(RuntimeError):
    """Ray is not installed: the message says which extra installs it."""


class TaskFailed(Exception):
    """A task that raised: the exception's one-line text and the tail of the task's
    log (what it printed, then the traceback)."""

    def __init__(self, error: str, log_tail: str):
        super().__init__(error)
        self.error = error
        self.log_tail = log_tail


def require_ray(command: str):
    """The ``ray`` module, or :class:`MissingExtra` naming ``command`` and the extra."""
    try:
        import ray
    except ImportError:
        raise MissingExtra(f"{command} runs on Ray, which is not installed: "
                           f"pip install 'fxpgen[{EXTRA}]'") from None
    return ray


@contextlib.contextmanager
def ray_session(command: str, *, address: str | None, num_cpus: int | None):
    """Ray for the length of the block: connected to the cluster at ``address``, or
    a local instance of ``num_cpus`` CPUs (default: this machine's). The workers get
    this process's ``FXPGEN_CACHE``, so their Verilator builds share the cache."""
    ray = require_ray(command)
    env = {k: os.environ[k] for k in ("FXPGEN_CACHE",) if k in os.environ}
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if env:
        options["runtime_env"] = {"env_vars": env}
    if address:
        ray.init(address=address, **options)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **options)
    try:
        yield ray
    finally:
        ray.shutdown()


def _logged(fn: Callable, args: tuple) -> tuple[bool, Any]:
    """``fn(*args)`` with its printed output captured: (True, result), or (False,
    (one-line error, log tail)) when it raised."""
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            return True, fn(*args)
    except Exception as e:
        log.write(traceback.format_exc())
        tail = "\n".join(log.getvalue().rstrip().splitlines()[-LOG_TAIL_LINES:])
        return False, (f"{type(e).__name__}: {' '.join(str(e).split())}", tail)


def fan_out(fn: Callable, jobs: dict[str, tuple], *, done: Callable[[str], None] | None = None,
            num_cpus: float = 1) -> Iterator[tuple[str, Any]]:
    """Run ``fn(*args)`` for every ``key: args`` of ``jobs`` as Ray tasks of
    ``num_cpus`` CPUs each (in a :func:`ray_session`) and yield ``(key, result)`` as
    each finishes, in finishing order; a task that raised or whose worker died yields
    ``(key, TaskFailed)``. ``done(key)`` is called as each finishes (progress)."""
    import ray
    remote = ray.remote(num_cpus=num_cpus, max_retries=0)(_logged)
    pending = {remote.remote(fn, args): key for key, args in jobs.items()}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        key = pending.pop(ready[0])
        try:
            ok, value = ray.get(ready[0])
        except ray.exceptions.RayError as e:
            text = str(e).strip().splitlines()
            ok, value = False, (f"{type(e).__name__}: {text[0] if text else ''}",
                                "\n".join(text[-LOG_TAIL_LINES:]))
        if done:
            done(key)
        yield key, value if ok else TaskFailed(*value)
