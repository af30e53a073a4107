"""cocotb test module that runs programs on the generated core (``fxpgen_core``).

Run it through :func:`fxpgen.sim.rtl.run_cocotb` with a job::

    {"programs": [{"insns": [hex, ...], "data": [hex, ...], "n_results": int,
                   "max_cycles": int (optional, overrides the job's)}, ...],
     "seed": int,
     "stall_prob": {"insn": p, "data": p, "result": p},   # each in [0, 1), default 0
     "max_cycles": int,          # per program, default 1_000_000
     "drain_cycles": int,        # optional, default 8
     "refs": [[program, at, base, first, count, run, stride], ...]}   # optional

A ref plays the host of off-chip maps: before program ``program`` starts, its data
word ``at + k`` (k < ``count``) becomes result word ``first + (k // run) * stride +
k % run`` of the programs from ``base`` on (their results one after another).

Words are hex strings (``"0x1f"`` or ``"1f"``; they exceed 64 bits). It resets
the core once, then runs the programs one after another on the same core (memories
persist). For each program it starts the three stream models at once (instruction
and data drivers, result monitor; random stalls drawn from ``random.Random`` seeded
with ``f"{seed}/{program}/{stream}"``) and waits, cycle by cycle, until

* ``state`` is HALTED with every HALT of the program retired, every instruction
  word sent and at least ``n_results`` result words received; or
* ``state`` is ERROR; or
* ``n_results`` is -1 (an error is expected) and the HALT condition above holds
  regardless of results (so an unexpected halt is reported, not waited out); or
* ``max_cycles`` cycles or the run's wall-clock deadline have passed (``timed_out``).

A HALT counts as retired when ``state`` *enters* HALTED (from any other state), so
the core must leave HALTED for at least one cycle when it starts each program. The
harness then stops both drivers (words not taken are dropped and counted), keeps
taking result words for ``drain_cycles`` more cycles (so a spurious extra word
shows up in this program's results, not the next one's), and records::

    {"results": [hex, ...], "lasts": [bool, ...], "state": int, "error": int,
     "error_pc": int, "counters": {"cycles": int, ...}, "timed_out": bool,
     "timeout_reason": None | "cycles" | "wall", "halts_seen": int,
     "insns_sent": int, "data_sent": int, "sim_cycles": int, "reset_before": bool}

``state``, ``error``, ``error_pc`` and the counters are sampled on the cycle the
wait ended. After a program that ended in ERROR or timed out, the core is reset
before the next one (``reset_before``); otherwise no reset happens between programs.

Port contract of ``fxpgen_core``: clock ``clk``; synchronous active-high reset
``rst``; streams ``insn`` (payload ``INSN_BITS``), ``data`` (payload ``bus_width``)
and ``result`` (payload ``bus_width + 1``: data in the low bits, ``last`` on top);
outputs ``state`` (2 bits), ``error`` (3 bits), ``error_pc`` (32 bits) and the
counters in :data:`COUNTERS`.
"""

from __future__ import annotations

import random
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from fxpgen.isa import Opcode, opcode_of
from fxpgen.sim.bfm import StreamDriver, StreamMonitor
from fxpgen.sim.rtl import deadline, load_job, write_result

IDLE, RUNNING, HALTED, ERROR = range(4)
COUNTERS = ("cycles", "mac_cycles", "stall_dispatch", "stall_data", "stall_result", "insns")
RESET_CYCLES = 4
DEFAULT_MAX_CYCLES = 1_000_000
DEFAULT_DRAIN_CYCLES = 8
_WALL_CHECK_EVERY = 256   # cycles between wall-clock deadline checks


def _word(value) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def _port(dut, name: str):
    try:
        return getattr(dut, name)
    except AttributeError:
        raise AttributeError(f"{dut._name} has no port {name!r} (see the port contract in "
                             "fxpgen.sim.cocotb_core)") from None


async def _reset(dut) -> None:
    """Hold ``rst`` for RESET_CYCLES edges with every handshake idle; returns right
    after the first edge with ``rst`` low."""
    _port(dut, "rst").value = 1
    _port(dut, "insn__valid").value = 0
    _port(dut, "data__valid").value = 0
    _port(dut, "result__ready").value = 0
    for _ in range(RESET_CYCLES):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


def _snapshot(dut) -> dict:
    """Status outputs and counters (call in ReadOnly)."""
    return {
        "state": _port(dut, "state").value.to_unsigned(),
        "error": _port(dut, "error").value.to_unsigned(),
        "error_pc": _port(dut, "error_pc").value.to_unsigned(),
        "counters": {c: _port(dut, c).value.to_unsigned() for c in COUNTERS},
    }


async def _run_program(dut, index: int, prog: dict, job: dict, end_time: float | None) -> dict:
    """Run one program (called right after a rising edge); see the module docstring."""
    clk = dut.clk
    insns = [_word(w) for w in prog.get("insns", [])]
    data = [_word(w) for w in prog.get("data", [])]
    n_results = int(prog.get("n_results", 0))
    n_halts = sum(1 for w in insns if opcode_of(w) == Opcode.HALT.value)
    max_cycles = int(prog.get("max_cycles", job.get("max_cycles", DEFAULT_MAX_CYCLES)))
    drain = int(job.get("drain_cycles", DEFAULT_DRAIN_CYCLES))
    stall = job.get("stall_prob", {}) or {}
    seed = job.get("seed", 0)

    def rng(stream: str) -> random.Random:
        return random.Random(f"{seed}/{index}/{stream}")

    insn_drv = StreamDriver(dut, "insn", clk, rng("insn"), stall.get("insn", 0.0))
    data_drv = StreamDriver(dut, "data", clk, rng("data"), stall.get("data", 0.0))
    result_mon = StreamMonitor(dut, "result", clk, rng("result"), stall.get("result", 0.0))

    await ReadOnly()
    prev_state = dut.state.value.to_unsigned()
    await RisingEdge(clk)
    insn_drv.start(insns)
    data_drv.start(data)
    result_mon.start()

    halts, cycles, timeout_reason = 0, 0, None
    while True:
        await ReadOnly()
        state = dut.state.value.to_unsigned()
        if state == HALTED and prev_state != HALTED:
            halts += 1
        prev_state = state
        if state == ERROR:
            break
        if (state == HALTED and halts >= n_halts and insn_drv.done
                and (n_results < 0 or len(result_mon.words) >= n_results)):
            break
        if cycles >= max_cycles:
            timeout_reason = "cycles"
            break
        if end_time is not None and cycles % _WALL_CHECK_EVERY == 0 and time.time() > end_time:
            timeout_reason = "wall"
            break
        await RisingEdge(clk)
        cycles += 1

    status = _snapshot(dut)
    await RisingEdge(clk)
    insn_drv.stop()
    data_drv.stop()
    for _ in range(drain):
        await RisingEdge(clk)
    result_mon.stop()

    bus = result_mon.width - 1
    mask = (1 << bus) - 1
    if timeout_reason is not None:
        dut._log.warning("program %d timed out (%s) after %d cycles in state %d",
                         index, timeout_reason, cycles, status["state"])
    return {
        "results": [hex(w & mask) for w in result_mon.words],
        "lasts": [bool(w >> bus) for w in result_mon.words],
        **status,
        "timed_out": timeout_reason is not None,
        "timeout_reason": timeout_reason,
        "halts_seen": halts,
        "insns_sent": insn_drv.sent,
        "data_sent": data_drv.sent,
        "sim_cycles": cycles,
    }


def _with_refs(index: int, prog: dict, refs, results: list[dict]) -> dict:
    """``prog`` with the data words its refs name taken from earlier programs' results."""
    mine = [r for r in refs if r[0] == index]
    if not mine:
        return prog
    data = list(prog.get("data", []))
    for _, at, base, first, count, run, stride in mine:
        words = [w for r in results[base:index] for w in r["results"]]
        for k in range(count):
            j = first + (k // run) * stride + k % run
            data[at + k] = words[j] if j < len(words) else "0x0"
    return {**prog, "data": data}


@cocotb.test()
async def run_programs(dut):
    """Run every program of the job (see the module docstring) and write the results."""
    job = load_job()
    end_time = deadline()
    Clock(dut.clk, 10, unit="ns").start()
    await _reset(dut)
    results = []
    needs_reset = False
    for index, prog in enumerate(job["programs"]):
        if needs_reset:
            await _reset(dut)
        prog = _with_refs(index, prog, job.get("refs", ()), results)
        out = await _run_program(dut, index, prog, job, end_time)
        out["reset_before"] = needs_reset
        results.append(out)
        needs_reset = out["state"] == ERROR or out["timed_out"]
    write_result({"programs": results})
