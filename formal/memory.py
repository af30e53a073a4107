"""Proof 3, the units' part: memory safety and footprints of every execution unit.

For any field values and any memory data, with the unit started as the
controller starts it (:func:`~.contract.controller_guarantee`), the harnesses
(:class:`StoreSafety`, :class:`LoadSafety`, :class:`LoadwSafety`,
:class:`MatmulSafety`, :class:`VectorSafety`) assert on every cycle:

- every memory access whose data is used lies inside its memory's depth and in
  a region the instruction declares for its stream: a read or write issued from
  the address loops checks the loops' untruncated address (the ``addrgen`` proof
  shows it exact); a write-back or a read later in the pipeline checks the address
  the pipeline carries against the regions declared by the instruction that
  issued it; the shift-table row and the lookup table a lane reads come from
  fields checked against the core (``table < table_depth``, ``table < lut_tables``);
  LOAD's rows of the shift table and the lookup tables lie below their depths;
- every such access lies in a region, table or bank whose bit is set in the mask
  the unit reports to the controller on that cycle (the weight bank a vector uses
  stays reported until its write-back);
- the unit's half of the contract (:class:`~.contract.ContractHarness`).

The invariants that close the induction: the latched fields equal the declared
ones, the in-flight counters of the MATMUL unit count the valid pipeline stages
of each accumulator region and weight bank, and every valid stage carries a
declared address. The pipeline stages are found by name (MATMUL's ``s1``,
``meta1``, ...; the vector unit's ``meta1``, ...), as many as the unit's
``write_delay`` gives, so the proofs follow the pipeline registers
(:mod:`fxpgen.hw.stages`) the unit is built with and a change of latency.

The MATMUL unit's accumulator read port is enabled only for the read ``1 +
acc_read`` cycles before a write-back (the write-backs in between are forwarded,
not read). Every read of the scratchpad or the accumulators also lies in a bank
whose read port the unit reports (:data:`fxpgen.isa.PORT_REGIONS`), and the vector
unit never reads ``x`` and ``y`` from one bank in one cycle: with the dispatch proof,
no bank serves two reads at once.
"""

from __future__ import annotations

import sys
from unittest.mock import patch

from amaranth import *
from amaranth.hdl import Assert

from fxpgen.config import REGIONS, CoreConfig
from fxpgen.hw.addrgen import loop_addr_bits
from fxpgen.hw.array import SystolicArray
from fxpgen.hw.buffers import addr_width
from fxpgen.hw.hazards import LUT_BIT, MEM_BASE, PORT_BASE, TABLE_BIT, bank_bit
from fxpgen.hw.load import LoadUnit
from fxpgen.hw.loadw import WeightLoader
from fxpgen.hw.matmul import MatmulUnit
from fxpgen.hw.stages import FAST, Stages
from fxpgen.hw.store import StoreUnit
from fxpgen.hw.vector import VectorUnit
from fxpgen.isa import PORT_REGIONS, Mem

from .addrgen import check_address_off_by_one
from .contract import ContractHarness
from .footprint import FOOTPRINT_CONFIG
from .observe import struct_fields

__all__ = ["MatmulSafety", "VectorSafety", "StoreSafety", "LoadSafety", "LoadwSafety", "off_by_one"]


def off_by_one(unit_class: type) -> type:
    """Mutant: ``unit_class`` checking its addresses with a depth check off by one
    (:func:`~.addrgen.check_address_off_by_one` in place of ``check_address`` in the
    unit's module while it elaborates)."""
    module = sys.modules[unit_class.__module__]

    class OffByOne(unit_class):
        def elaborate(self, platform):
            with patch.object(module, "check_address", check_address_off_by_one):
                return super().elaborate(platform)
    OffByOne.__name__ = OffByOne.__qualname__ = f"OffByOne{unit_class.__name__}"
    return OffByOne


def _stages(signals: dict, names: list[str]) -> list:
    """The fields of the unit's pipeline stages after issue, named ``names`` in
    order (a stage the unit no longer builds under its name is a ``KeyError``)."""
    return [struct_fields(signals[name]) for name in names]


def _port_held(region, mem: Mem, ports) -> Value:
    """Whether ``ports`` (a unit's reported writes) hold the read port of the bank of
    ``region`` of ``mem``."""
    return ports.bit_select(PORT_BASE[mem] + region // PORT_REGIONS[mem], 1)


def _region(addr, depth: int) -> Value:
    """The region of ``addr`` in a memory of ``depth`` rows (the top two address bits)."""
    width = addr_width(depth)
    return Value.cast(addr)[width - 2:width]


class _Safety(ContractHarness):
    """Shared parts: the unit (``UNIT``, named ``NAME`` in the controller) on
    :data:`~.footprint.FOOTPRINT_CONFIG`, or with ``mutant`` its
    :func:`off_by_one` twin; the declared fields latched at start, the loops'
    addresses, the checks."""

    def _x_reads(self, m, dut, signals, reads) -> None:
        """A unit whose one loop reads at its x address: its latched regions are the
        declared ones, and each read ``(enable, depth, memory, name)`` lands inside the
        memory, the declared regions and the reads the unit reports."""
        cfg, ctrl = self._cfg, dut.ctrl
        decl = self._declared(m, ctrl, {"x": ctrl.insn.x.regions})
        x = self._loop_addr(signals, 0, cfg)
        m.d.comb += Assert(signals["regions"] == decl["x"], "x regions latched")
        for en, depth, mem, name in reads:
            m.d.comb += Assert(~en | self._inside(x, depth, decl["x"], ctrl.reads, mem, ctrl.writes),
                               f"{name} read inside memory, declared regions, reads and read ports")

    UNIT: type
    NAME: str

    def __init__(self, mutant: bool = False):
        unit_class = off_by_one(self.UNIT) if mutant else self.UNIT
        super().__init__(self.NAME, self._builder(unit_class), FOOTPRINT_CONFIG)

    def _builder(self, unit_class: type):
        """A function building ``unit_class`` for a configuration."""
        return unit_class

    def _declared(self, m: Module, ctrl, fields: dict) -> dict:
        """Registers latching, at ``start``, each ``name: value`` of ``fields``."""
        held = {}
        for name, value in fields.items():
            held[name] = Signal.like(Value.cast(value), name=f"declared_{name}")
            with m.If(ctrl.start):
                m.d.sync += held[name].eq(value)
        return held

    @staticmethod
    def _loop_addr(signals: dict, k: int, cfg: CoreConfig) -> Value:
        """Stream ``k``'s untruncated loop address (with the sticky bit on top)."""
        width = loop_addr_bits(cfg) + 1
        return signals["loops.addr"][k * width:(k + 1) * width]

    @staticmethod
    def _inside(addr, depth: int, regions, mask, mem: Mem, ports=None) -> Value:
        """``addr`` inside a ``depth``-row memory, in a region of ``regions``, and
        that region's bit of ``mem`` set in ``mask``; for a read of a banked memory,
        the bank's read port set in ``ports``."""
        region = _region(addr, depth)
        inside = (((Value.cast(addr) >> addr_width(depth)) == 0) & regions.bit_select(region, 1)
                  & mask.bit_select(MEM_BASE[mem] + region, 1))
        if ports is not None and mem in PORT_REGIONS:
            inside &= _port_held(region, mem, ports)
        return inside


class _Pipelined(_Safety):
    """A unit built with the pipeline registers ``stages`` (:mod:`fxpgen.hw.stages`)."""

    def __init__(self, mutant: bool = False, stages: Stages = FAST):
        self._pipe = stages
        super().__init__(mutant)


class MatmulSafety(_Pipelined):
    """Memory safety and footprint of the MATMUL unit, built for the latency of its
    configuration's array and with ``stages``; see the module doc."""

    UNIT, NAME = MatmulUnit, "matmul"

    def _builder(self, unit_class):
        cfg = FOOTPRINT_CONFIG
        self._array = SystolicArray(cfg.rows, cfg.cols, cfg.psum_width)
        return lambda cfg: unit_class(cfg, self._array.LATENCY, self._pipe)

    def properties(self, m, dut, signals):
        cfg, ctrl = self._cfg, dut.ctrl
        # The array the latency comes from, unconnected: the unit's ``psum`` input
        # stays free, so the proof holds for any partial sums.
        m.submodules.array = self._array
        p = ctrl.insn.params.matmul
        decl = self._declared(m, ctrl, {"x": ctrl.insn.x.regions, "z": ctrl.insn.z.regions, "bank": p.bank})
        x_addr, z_addr = self._loop_addr(signals, 0, cfg), self._loop_addr(signals, 1, cfg)
        issue = signals["issue"]
        m.d.comb += [
            Assert(~dut.spad_rd.en | (self._inside(x_addr, cfg.spad_depth, decl["x"], ctrl.reads, Mem.SPAD,
                                                   ctrl.writes)
                                      & (dut.spad_rd.addr == x_addr[:len(dut.spad_rd.addr)])),
                   "scratchpad read inside memory, declared regions, reads and read ports"),
            Assert(~issue | self._inside(z_addr, cfg.acc_depth, decl["z"], ctrl.writes, Mem.ACC),
                   "accumulator row issued inside memory, declared regions and writes"),
        ]
        for name in ("x", "z"):
            m.d.comb += Assert(signals[f"{name}_regions"] == decl[name], f"{name} regions latched")
        m.d.comb += Assert(signals["bank"] == decl["bank"], "bank latched")
        self._pipeline(m, dut, signals, decl, issue)

    def _pipeline(self, m, dut, signals, decl, issue):
        """Every stage from issue to write-back carries an address of the regions and
        the bank its instruction declared, both reported; the in-flight counters
        count the stages. Stage ``s1`` is cycle 1, ``meta<k>`` cycle ``1 + k``, the
        write-back cycle ``write_delay``; the accumulator row it adds to is read
        ``1 + acc_read`` cycles before."""
        cfg, ctrl = self._cfg, dut.ctrl
        stages = _stages(signals, ["s1"] + [f"meta{k}" for k in range(1, dut.write_delay)])
        regions, banks = [decl["z"]], [decl["bank"]]
        for k in range(len(stages)):
            r = Signal(REGIONS, name=f"stage{k}_regions")
            b = Signal(name=f"stage{k}_bank")
            m.d.sync += [r.eq(regions[-1]), b.eq(banks[-1])]
            regions.append(r)
            banks.append(b)
        for k, (stage, r, b) in enumerate(zip(stages, regions[1:], banks[1:])):
            region = _region(stage.addr, cfg.acc_depth)
            m.d.comb += Assert(~stage.valid | (r.bit_select(region, 1) & (stage.bank == b)
                                               & ctrl.writes.bit_select(MEM_BASE[Mem.ACC] + region, 1)
                                               & (ctrl.reads & bank_bit(stage.bank)).any()),
                               f"stage {k + 1}: declared accumulator row and bank, both reported")
        for r in range(REGIONS):
            count = sum((s.valid & (_region(s.addr, cfg.acc_depth) == r)).as_unsigned() for s in stages)
            m.d.comb += Assert(signals[f"inflight_acc{r}"] == count, f"region {r}: in-flight count")
        for b in range(2):
            count = sum((s.valid & (s.bank == b)).as_unsigned() for s in stages)
            m.d.comb += Assert(signals[f"inflight_bank{b}"] == count, f"bank {b}: in-flight count")
        wb, rd = stages[-1], stages[-2 - self._pipe.acc_read]
        m.d.comb += [
            Assert(~dut.acc_wr.en | (wb.valid & (dut.acc_wr.addr == wb.addr)), "write-back at its stage's row"),
            Assert(~rd.valid | (dut.acc_rd.addr == rd.addr), "accumulator read at its stage's row"),
            Assert(dut.acc_rd.en == rd.valid, "accumulator read only for a stage"),
            Assert(~rd.valid | _port_held(_region(rd.addr, cfg.acc_depth), Mem.ACC, ctrl.writes),
                   "accumulator read port held"),
        ]


class VectorSafety(_Pipelined):
    """Memory safety and footprint of the vector unit, built with ``stages``; see
    the module doc."""

    UNIT, NAME = VectorUnit, "vector"

    def _builder(self, unit_class):
        return lambda cfg: unit_class(cfg, self._pipe)

    def properties(self, m, dut, signals):
        cfg, ctrl = self._cfg, dut.ctrl
        insn = ctrl.insn
        decl = self._declared(m, ctrl, {"x": insn.x.regions, "y": insn.y.regions, "z": insn.z.regions,
                                        "table": insn.params.requant.table, "lut": insn.params.lut.table})
        x, y, z = (self._loop_addr(signals, k, cfg) for k in range(3))
        reads = ctrl.reads
        m.d.comb += [
            Assert(~dut.acc_rd.en | self._inside(x, cfg.acc_depth, decl["x"], reads, Mem.ACC, ctrl.writes),
                   "accumulator read inside memory, declared regions, reads and read ports"),
            Assert(~dut.spad_rd_x.en | self._inside(x, cfg.spad_depth, decl["x"], reads, Mem.SPAD, ctrl.writes),
                   "scratchpad x read inside memory, declared regions, reads and read ports"),
            Assert(~dut.spad_rd_y.en | self._inside(y, cfg.spad_depth, decl["y"], reads, Mem.SPAD, ctrl.writes),
                   "scratchpad y read inside memory, declared regions, reads and read ports"),
            Assert(~(dut.spad_rd_x.en & dut.spad_rd_y.en)
                   | (_region(x, cfg.spad_depth) // PORT_REGIONS[Mem.SPAD]
                      != _region(y, cfg.spad_depth) // PORT_REGIONS[Mem.SPAD]),
                   "x and y read in one cycle only from different banks"),
            Assert(~signals["issue"] | self._inside(z, cfg.spad_depth, decl["z"], ctrl.writes, Mem.SPAD),
                   "scratchpad row issued inside memory, declared regions and writes"),
            Assert(~dut.table_rd.en | ((decl["table"] < cfg.table_depth) & (dut.table_rd.addr == decl["table"])
                                       & reads.bit_select(TABLE_BIT, 1)),
                   "shift-table row inside the table, reported"),
        ]
        for i, port in enumerate(getattr(dut, "lut_rd", [])):
            m.d.comb += Assert(~port.en | ((decl["lut"] < cfg.lut_tables) & (port.addr[8:] == decl["lut"])
                                           & reads.bit_select(LUT_BIT, 1)),
                               f"lane {i}: lookup inside its declared table, reported")
        for name in ("x", "y", "z"):
            m.d.comb += Assert(signals[f"{name}_regions"] == decl[name], f"{name} regions latched")
        rparams, lparams = struct_fields(signals["rparams"]), struct_fields(signals["lparams"])
        m.d.comb += [
            Assert((rparams.table == decl["table"]) & (lparams.table == decl["lut"]), "tables latched"),
            Assert(~signals["is_requant"] | (decl["table"] < cfg.table_depth), "a REQUANT's table is legal"),
            Assert(~signals["op_lut"] | (decl["lut"] < cfg.lut_tables), "a LUT's table is legal"),
        ]
        # ``meta<k>`` is cycle k; the last, cycle ``write_delay``, writes back.
        stages = _stages(signals, [f"meta{k}" for k in range(1, dut.write_delay + 1)])
        for k, stage in enumerate(stages):
            region = _region(stage.addr, cfg.spad_depth)
            m.d.comb += Assert(~stage.valid | (decl["z"].bit_select(region, 1)
                                               & ctrl.writes.bit_select(MEM_BASE[Mem.SPAD] + region, 1)),
                               f"stage {k + 1}: declared scratchpad row, reported")
        wb = stages[-1]
        m.d.comb += Assert((dut.spad_wr.en == 0) | (wb.valid & (dut.spad_wr.addr == wb.addr)),
                           "write-back at its stage's row")


class StoreSafety(_Safety):
    """Memory safety and footprint of the STORE unit."""

    UNIT, NAME = StoreUnit, "store"

    def properties(self, m, dut, signals):
        cfg = self._cfg
        self._x_reads(m, dut, signals, [(dut.spad_rd.en, cfg.spad_depth, Mem.SPAD, "scratchpad"),
                                        (dut.acc_rd.en, cfg.acc_depth, Mem.ACC, "accumulator")])


class LoadwSafety(_Safety):
    """Memory safety and footprint of the LOADW unit."""

    UNIT, NAME = WeightLoader, "loadw"

    def properties(self, m, dut, signals):
        self._x_reads(m, dut, signals, [(dut.wbuf_rd.en, self._cfg.wbuf_depth, Mem.WBUF, "weight-buffer")])


class LoadSafety(_Safety):
    """Memory safety and footprint of the LOAD unit: the regioned memories by
    depth and declared region, the shift table and the lookup tables by depth."""

    UNIT, NAME = LoadUnit, "load"

    def properties(self, m, dut, signals):
        cfg, ctrl = self._cfg, dut.ctrl
        decl = self._declared(m, ctrl, {"z": ctrl.insn.z.regions})
        z = self._loop_addr(signals, 0, cfg)
        m.d.comb += Assert(signals["regions"] == decl["z"], "z regions latched")
        for port, mem in ((dut.spad_wr, Mem.SPAD), (dut.wbuf_wr, Mem.WBUF), (dut.acc_wr, Mem.ACC)):
            m.d.comb += Assert((port.en == 0) | self._inside(z, cfg.depth(mem), decl["z"], ctrl.writes, mem),
                               f"{mem.name} write inside memory, declared regions and writes")
        single = [(dut.table_wr, Mem.TABLE, TABLE_BIT)]
        if cfg.lut_tables:
            single.append((dut.lut_wr, Mem.LUT, LUT_BIT))
        for port, mem, bit in single:
            m.d.comb += Assert((port.en == 0) | ((z < cfg.depth(mem)) & ctrl.writes.bit_select(bit, 1)),
                               f"{mem.name} write inside memory and writes")
