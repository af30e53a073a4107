"""Timelines of a program's run as Chrome / Perfetto traces (the Trace Event JSON
format: open in https://ui.perfetto.dev or chrome://tracing).

One process, one track per execution unit (``LOAD``, ``LOADW``, ``MATMUL``,
``vector``, ``STORE``) with a slice per instruction labelled ``#index OPCODE layer``,
a ``dispatch`` track with HALT and SYNC and, for every instruction that had to wait
as the current one (its unit busy, or a hazard), a ``wait`` slice over those
cycles, and a ``layers`` track with a slice per HALT segment. Time is in counted
cycles (:class:`~fxpgen.sim.cycle_model.Slice`): one cycle is one microsecond of
the trace's clock, so the viewer's "us" reads as cycles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

from .cycle_model import CONTROL, SegmentTiming, Slice

__all__ = ["TRACKS", "chrome_trace", "write_trace"]

#: Track names by unit (``hw.controller.UNITS`` and the dispatcher), top to bottom.
TRACKS = {CONTROL: "dispatch", "load": "LOAD", "loadw": "LOADW", "matmul": "MATMUL",
          "vector": "vector", "store": "STORE", "layers": "layers"}


def _event(tid: int, name: str, first: int, last: int, args: dict) -> dict:
    """A complete event over counted cycles ``first`` to ``last`` (inclusive)."""
    return {"name": name, "ph": "X", "pid": 1, "tid": tid, "ts": first - 1,
            "dur": last - first + 1, "args": args}


def chrome_trace(slices: Iterable[Slice], segments: Sequence[SegmentTiming], *,
                 source: str) -> dict:
    """The trace of a run (``source`` names what produced the timeline, e.g. "model"
    or "native") as a JSON-ready dict."""
    tids = {unit: k + 1 for k, unit in enumerate(TRACKS)}
    events: list[dict] = [{"name": "process_name", "ph": "M", "pid": 1, "tid": 0,
                           "args": {"name": f"fxpgen core ({source})"}}]
    for unit, tid in tids.items():
        events.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid,
                       "args": {"name": TRACKS[unit]}})
        events.append({"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": tid,
                       "args": {"sort_index": tid}})
    for s in slices:
        label = f"#{s.index} {s.opcode.name} {s.layer}"
        args = {"index": s.index, "opcode": s.opcode.name, "layer": s.layer,
                "dispatch": s.dispatch, "first": s.first, "last": s.last}
        if s.dispatch > s.waiting:
            events.append(_event(tids[CONTROL], f"wait {label}", s.waiting, s.dispatch - 1, args))
        events.append(_event(tids[s.unit], label, s.first, s.last, args))
    for seg in segments:
        events.append(_event(tids["layers"], seg.layer, seg.start + 1,
                             seg.start + seg.counters["cycles"], dict(seg.counters)))
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {"source": source, "time_unit": "1 us = 1 core cycle"}}


def write_trace(path: Path | str, slices: Iterable[Slice], segments: Sequence[SegmentTiming], *,
                source: str) -> None:
    """Write :func:`chrome_trace` to ``path``."""
    Path(path).write_text(json.dumps(chrome_trace(slices, segments, source=source)))
