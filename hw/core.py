"""The accelerator core: controller, execution units, memories and the systolic
array, wired together and nothing else.

Top-level ports (flattened in Verilog as ``<name>__payload/__valid/__ready`` for
streams):

- ``insn`` (in, stream): instruction words, ``fxpgen.isa.INSN_BITS`` bits.
- ``data`` (in, stream): data words, ``bus_width`` bits (rows for LOAD).
- ``result`` (out, stream): ``bus_width`` bits of row data, then the ``last`` bit.
- ``state`` (:class:`fxpgen.isa.CoreState`), ``error`` (:class:`fxpgen.isa.ErrorCode`),
  ``error_pc`` (index of the faulting instruction since reset).
- counters, ``counter_width`` bits each, cleared when a program starts and frozen
  by HALT: ``cycles``, ``mac_cycles`` (vectors entering the array, rows x cols MACs
  each), ``stall_dispatch`` (an instruction waiting for its unit or a hazard),
  ``stall_data`` (LOAD waiting for the data stream), ``stall_result`` (the result
  stream not ready), ``insns`` (instructions dispatched).
"""

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect

from fxpgen.config import CoreConfig
from fxpgen.isa import INSN_BITS, CoreState, ErrorCode

from .vector import VectorUnit
from .array import SystolicArray
from .buffers import Buffers
from .controller import COUNTERS, Controller
from .unit_port import PC_WIDTH
from .load import LoadUnit
from .matmul import MatmulUnit
from .stages import FAST, Stages
from .store import ResultWord, StoreUnit
from .loadw import WeightLoader

__all__ = ["Core"]


class Core(wiring.Component):
    """One fxpgen accelerator core for a :class:`~fxpgen.config.CoreConfig`, with the
    pipeline registers ``stages`` (:mod:`fxpgen.hw.stages`; the same results with
    any, only the latencies differ), its scratchpad and accumulators ``banked`` or
    not (:mod:`fxpgen.hw.buffers`; the same results and cycles)."""

    def __init__(self, cfg: CoreConfig, stages: Stages = FAST, banked: bool = True):
        if not isinstance(cfg, CoreConfig):
            raise TypeError(f"Core needs a CoreConfig, not {type(cfg).__name__}")
        self._cfg = cfg
        self._stages = stages
        self._banked = banked
        members = {
            "insn": In(stream.Signature(unsigned(INSN_BITS))),
            "data": In(stream.Signature(unsigned(cfg.bus_width))),
            "result": Out(stream.Signature(ResultWord(cfg))),
            "state": Out(CoreState),
            "error": Out(ErrorCode),
            "error_pc": Out(PC_WIDTH),
        }
        for c in COUNTERS:
            members[c] = Out(cfg.counter_width)
        super().__init__(members)

    @property
    def cfg(self) -> CoreConfig:
        return self._cfg

    @property
    def stages(self) -> Stages:
        return self._stages

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        m.submodules.controller = ctl = Controller(cfg)
        m.submodules.buffers = buf = Buffers(cfg, self._banked)
        m.submodules.array = arr = SystolicArray(cfg.rows, cfg.cols, cfg.psum_width)
        m.submodules.load = load = LoadUnit(cfg)
        m.submodules.store = store = StoreUnit(cfg)
        m.submodules.loadw = loadw = WeightLoader(cfg)
        m.submodules.matmul = mm = MatmulUnit(cfg, arr.LATENCY, self._stages)
        m.submodules.vector = vec = VectorUnit(cfg, self._stages)

        connect(m, wiring.flipped(self.insn), ctl.insn)
        for name, unit in (("load", load), ("store", store), ("loadw", loadw),
                           ("matmul", mm), ("vector", vec)):
            connect(m, getattr(ctl, name), unit.ctrl)
        m.d.comb += [
            self.state.eq(ctl.state), self.error.eq(ctl.error), self.error_pc.eq(ctl.error_pc),
            ctl.mac_issue.eq(mm.issuing), ctl.stall_data.eq(load.stall),
            ctl.stall_result.eq(store.stall),
        ]
        m.d.comb += [getattr(self, c).eq(getattr(ctl, f"count_{c}")) for c in COUNTERS]

        connect(m, wiring.flipped(self.data), load.data)
        connect(m, load.spad_wr, buf.spad_wr_load)
        connect(m, load.wbuf_wr, buf.wbuf_wr)
        connect(m, load.acc_wr, buf.acc_wr_load)
        connect(m, load.table_wr, buf.table_wr)
        if cfg.lut_tables:
            connect(m, load.lut_wr, buf.lut_wr)
        m.d.comb += [load.spad_free.eq(buf.spad_load_free & ~vec.spad_hold),
                     load.acc_free.eq(buf.acc_load_free)]

        connect(m, wiring.flipped(self.result), store.result)
        connect(m, store.spad_rd, buf.spad_rd_store)
        connect(m, store.acc_rd, buf.acc_rd_store)

        connect(m, loadw.wbuf_rd, buf.wbuf_rd)
        m.d.comb += arr.weights.eq(loadw.weights)

        connect(m, mm.spad_rd, buf.spad_rd_matmul)
        connect(m, mm.acc_rd, buf.acc_rd_matmul)
        connect(m, mm.acc_wr, buf.acc_wr_matmul)
        m.d.comb += [arr.act.eq(mm.act), mm.psum.eq(arr.psum)]

        connect(m, vec.spad_rd_x, buf.spad_rd_alu_x)
        connect(m, vec.spad_rd_y, buf.spad_rd_alu_y)
        connect(m, vec.acc_rd, buf.acc_rd_alu)
        connect(m, vec.table_rd, buf.table_rd)
        if cfg.lut_tables:
            for vec_lut, buf_lut in zip(vec.lut_rd, buf.lut_rd):
                connect(m, vec_lut, buf_lut)
        connect(m, vec.spad_wr, buf.spad_wr_alu)
        return m
