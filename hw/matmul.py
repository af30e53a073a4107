"""MATMUL: stream scratchpad vectors through the array into the accumulators.

Pipeline, one vector per cycle with no stalls once issued:

- Cycle 0: check both addresses, read the scratchpad row.
- Cycle 1: pick the ``rows`` bytes of the lane, extend to 9 bits (int8 or uint8)
  into ``stages.matmul_act`` registers (:mod:`fxpgen.hw.stages`: the block RAM's
  clock-to-out and the first PE's multiplier do not fit one cycle at 100 MHz).
- Cycle 1 + matmul_act: enter the array with the weight bank.
- Cycle write_delay - 1 - acc_read: read the accumulator row (transparent to the
  write port, so a row written in that cycle reads new).
- The next ``stages.acc_read`` cycles: the row read passes through registers (the
  block RAM's clock-to-out and the adder do not fit one cycle either).
- Cycle write_delay = 1 + matmul_act + LATENCY: ``acc <= sat(acc + psum)`` (or
  ``psum``) written back; a row written back in the cycles since the read is
  forwarded from those write-backs, the newest first, so repeated rows still
  accumulate in order.

Per-region and per-bank counters of vectors in flight keep the accumulator regions
and the weight bank marked busy until the last write-back, so other units never
touch them early. A new MATMUL is accepted in the cycle the current one issues its
last vector, so back-to-back matmuls keep the array full.
"""

from typing import NamedTuple

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from fxpgen.config import REGIONS, CoreConfig
from fxpgen.isa import ErrorCode, Mem

from .addrgen import check_address
from .delay import delay
from .stages import FAST, Stages
from .buffers import acc_row, addr_width, read_sig, spad_row, write_sig
from .unit_port import UnitControl, report, unit_loops
from .hazards import bank_bit, mem_bits, port_bits
from .pe import ACT_WIDTH

__all__ = ["MatmulUnit"]


class _Insn(NamedTuple):
    """The running instruction's fields, latched at ``start``."""
    bank: Signal
    accumulate: Signal
    act_signed: Signal
    lane: Signal
    x_regions: Signal
    z_regions: Signal


class MatmulUnit(wiring.Component):
    """Executes MATMUL: feeds ``act`` to the array from ``spad_rd`` and accumulates
    its ``psum`` through ``acc_rd``/``acc_wr``; ``issuing`` marks each vector sent;
    ``stages`` sets its pipeline registers."""

    def __init__(self, cfg: CoreConfig, array_latency: int, stages: Stages = FAST):
        least = max(1, 1 + stages.acc_read - stages.matmul_act)   # the accumulator read after cycle 0
        if array_latency < least:
            raise ValueError(f"array_latency must be at least {least}, not {array_latency}")
        self._cfg = cfg
        self._stages = stages
        self._write_delay = stages.matmul_write_delay(array_latency)
        super().__init__({
            "ctrl": In(UnitControl()),
            "spad_rd": In(read_sig(cfg.spad_depth, spad_row(cfg))),
            "acc_rd": In(read_sig(cfg.acc_depth, acc_row(cfg))),
            "acc_wr": In(write_sig(cfg.acc_depth, acc_row(cfg))),
            "act": Out(data.StructLayout({
                "valid": 1, "bank": 1, "data": data.ArrayLayout(signed(ACT_WIDTH), cfg.rows)})),
            "psum": In(data.StructLayout({
                "valid": 1, "data": data.ArrayLayout(signed(cfg.psum_width), cfg.cols)})),
            "issuing": Out(1),
        })

    @property
    def write_delay(self) -> int:
        """Cycles from a vector's issue (its scratchpad read) to its accumulator write."""
        return self._write_delay

    def elaborate(self, platform):
        m = Module()
        loops, pc = unit_loops(m, self.ctrl, ("x", "z"), self._cfg)
        insn = self._latch(m)
        err, issue = self._issue(m, insn, loops)
        z_addr = loops.addr[1]

        # Cycle 1 onwards: metadata enters a delay line aligned with the array;
        # meta[k] is cycle 1 + k.
        meta_layout = data.StructLayout({"valid": 1, "bank": 1, "accumulate": 1,
                                         "addr": addr_width(self._cfg.acc_depth)})
        s1 = Signal(meta_layout)
        s1_signed = Signal()
        s1_lane = Signal(4)
        m.d.sync += [s1.valid.eq(issue), s1.bank.eq(insn.bank), s1.accumulate.eq(insn.accumulate),
                     s1.addr.eq(z_addr), s1_signed.eq(insn.act_signed), s1_lane.eq(insn.lane)]
        self._activations(m, s1, s1_signed, s1_lane)
        meta = [s1]
        for k in range(1, self._write_delay):
            r = Signal(meta_layout, name=f"meta{k}")
            m.d.sync += r.eq(meta[-1])
            meta.append(r)
        rd, wb = meta[self._write_delay - 2 - self._stages.acc_read], meta[-1]
        m.d.comb += [self.acc_rd.addr.eq(rd.addr), self.acc_rd.en.eq(rd.valid)]
        acc_read = self._stages.acc_read
        self._write_back(m, wb, meta[len(meta) - 1 - acc_read:-1][::-1])

        acc_inflight, bank_inflight = self._inflight(m, insn, issue, z_addr, wb)
        self._report(m, insn, loops, acc_inflight, bank_inflight, err, pc)
        return m

    def _latch(self, m: Module) -> _Insn:
        """Latch the parameters and the region masks at ``start``."""
        ctrl = self.ctrl
        bank = Signal()
        accumulate = Signal()
        act_signed = Signal()
        lane = Signal(4)
        x_regions = Signal(4)
        z_regions = Signal(4)
        p = ctrl.insn.params.matmul
        with m.If(ctrl.start):
            m.d.sync += [bank.eq(p.bank), accumulate.eq(p.accumulate), act_signed.eq(p.act_signed),
                         lane.eq(p.lane), x_regions.eq(ctrl.insn.x.regions),
                         z_regions.eq(ctrl.insn.z.regions)]
        return _Insn(bank, accumulate, act_signed, lane, x_regions, z_regions)

    def _issue(self, m: Module, insn: _Insn, loops) -> tuple[Signal, Signal]:
        """Cycle 0: check both addresses (x first); issue the iteration and read the
        scratchpad row when both are good. Returns ``(err, issue)``."""
        cfg = self._cfg
        x_addr, z_addr = loops.addr[0], loops.addr[1]
        x_err = check_address(m, x_addr, addr_width(cfg.spad_depth), insn.x_regions, "x")
        z_err = check_address(m, z_addr, addr_width(cfg.acc_depth), insn.z_regions, "z")
        err = Signal(ErrorCode)
        m.d.comb += err.eq(Mux(x_err != ErrorCode.NONE, x_err, z_err))
        issue = Signal()
        m.d.comb += [
            issue.eq(loops.valid & (err == ErrorCode.NONE) & ~self.ctrl.abort),
            loops.advance.eq(issue),
            self.spad_rd.addr.eq(x_addr),
            self.spad_rd.en.eq(issue),
            self.issuing.eq(issue),
        ]
        return err, issue

    def _activations(self, m: Module, s1, s1_signed, s1_lane) -> None:
        """Cycle 1: the ``rows`` bytes of the lane, extended to int8 or uint8, enter
        the array with the weight bank ``stages.matmul_act`` cycles later."""
        cfg = self._cfg
        row = self.spad_rd.data.as_value()
        vector = Signal(8 * cfg.rows)
        m.d.comb += vector.eq(row.word_select(s1_lane, 8 * cfg.rows) if cfg.lanes > cfg.rows else row)
        act = Signal.like(self.act, name="act_read")
        m.d.comb += [act.valid.eq(s1.valid), act.bank.eq(s1.bank)]
        for i in range(cfg.rows):
            byte = vector[8 * i:8 * i + 8]
            m.d.comb += act.data[i].eq(Mux(s1_signed, byte.as_signed(), byte.as_unsigned()))
        m.d.comb += self.act.eq(delay(m, act, self._stages.matmul_act, "act"))

    def _write_back(self, m: Module, wb, ahead) -> None:
        """Cycle write_delay: ``acc <= sat(acc + psum)`` (or ``psum``) at ``wb.addr``,
        ``acc`` being the row read ``stages.acc_read`` cycles ago or, when the same row
        was written back since, the newest of those writes; ``ahead[k - 1]`` is the
        write-back ``k`` cycles behind ``wb``."""
        W = self._cfg.acc_width
        lo, hi = -(1 << (W - 1)), (1 << (W - 1)) - 1
        wr = self.acc_wr
        m.d.comb += [wr.addr.eq(wb.addr), wr.en.eq(wb.valid)]
        current = Signal.like(self.acc_rd.data, name="acc_current")
        stages = self._stages.acc_read
        m.d.comb += current.eq(delay(m, self.acc_rd.data, stages, "acc_read"))
        # The write-back k cycles ago hits this one's row: compared when it was
        # written, against the row then k stages behind, so no comparator sits here.
        for k in reversed(range(1, stages + 1)):     # the newest last: it wins
            hit = delay(m, wr.en & (wr.addr == ahead[k - 1].addr), k, f"written{k}_hit")
            written = delay(m, wr.data, k, f"written{k}_data")
            with m.If(hit):
                m.d.comb += current.eq(written)
        for j in range(self._cfg.cols):
            total = Signal(signed(W + 1), name=f"total{j}")
            m.d.comb += total.eq(Mux(wb.accumulate, current[j], 0) + self.psum.data[j])
            m.d.comb += wr.data[j].eq(Mux(total > hi, hi, Mux(total < lo, lo, total)))

    def _inflight(self, m: Module, insn: _Insn, issue, z_addr, wb) -> tuple[list, list]:
        """Counters of vectors between issue and write-back, per accumulator region
        and per weight bank. Returns ``(per_region, per_bank)``."""
        depth = self._write_delay + 1
        region_shift = addr_width(self._cfg.acc_depth) - 2
        inflight = []
        for r in range(REGIONS):
            cnt = Signal(range(depth + 1), name=f"inflight_acc{r}")
            inc = issue & ((z_addr >> region_shift) == r)
            dec = wb.valid & ((wb.addr >> region_shift) == r)
            m.d.sync += cnt.eq(cnt + inc - dec)
            inflight.append(cnt)
        bank_inflight = []
        for b in range(2):
            cnt = Signal(range(depth + 1), name=f"inflight_bank{b}")
            m.d.sync += cnt.eq(cnt + (issue & (insn.bank == b)) - (wb.valid & (wb.bank == b)))
            bank_inflight.append(cnt)
        return inflight, bank_inflight

    def _report(self, m: Module, insn: _Insn, loops, acc_inflight, bank_inflight, err, pc):
        """Status to the controller: ready in the cycle of the last vector; the
        regions and banks with vectors in flight stay marked. Ready does not wait
        for the last vector's address check (a long path): if it fails, the error
        aborts whatever the controller started in the same cycle."""
        acc_busy = Cat(*(c != 0 for c in acc_inflight))
        # Each accumulator row is read just before its write-back: the read ports of
        # the regions written stay held as long as the regions.
        acc_regions = Mux(loops.valid, insn.z_regions, 0) | acc_busy
        report(m, self.ctrl, ready=~loops.valid | loops.last,
               busy=loops.valid | (acc_busy != 0),
               reads=(Mux(loops.valid, mem_bits(Mem.SPAD, insn.x_regions) | bank_bit(insn.bank), 0)
                      | Mux(bank_inflight[0] != 0, bank_bit(0), 0)
                      | Mux(bank_inflight[1] != 0, bank_bit(1), 0)),
               writes=(mem_bits(Mem.ACC, acc_regions) | port_bits(Mem.ACC, acc_regions)
                       | Mux(loops.valid, port_bits(Mem.SPAD, insn.x_regions), 0)),
               error=err, pc=pc, active=loops.valid)
