"""The on-chip memories: activation scratchpad, weight buffer, accumulator memory,
shift table and lookup tables, with their read ports and the write-port arbitration.

Reads are synchronous (data one cycle after the address). The scratchpad's single
write port is shared by the vector unit (priority) and the loader; the accumulator's
by the matmul writeback (priority; the array never stalls) and the loader. The
matmul's accumulator read port is transparent for the write port, so a row
accumulated on consecutive cycles reads its newest value.

The lookup tables are one ``lut_depth`` x 8-bit memory per scratchpad lane, all
written together by LOAD: every lane looks up its own byte in the same cycle, and a
single-ported copy per lane maps to one block RAM each (a shared multi-read memory
would be replicated per read port by the synthesis tools anyway).
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import Out

from fxpgen.config import CoreConfig

__all__ = ["Buffers", "spad_row", "acc_row", "wbuf_row", "table_row", "addr_width"]

LUT_ENTRY = unsigned(8)

TableEntry = data.StructLayout({"shift": signed(6), "align": signed(6)})


def spad_row(cfg):
    return data.ArrayLayout(unsigned(8), cfg.lanes)


def wbuf_row(cfg):
    return data.ArrayLayout(signed(8), cfg.cols)


def acc_row(cfg):
    return data.ArrayLayout(signed(cfg.acc_width), cfg.cols)


def table_row(cfg):
    return data.ArrayLayout(TableEntry, cfg.cols)


def addr_width(depth: int) -> int:
    return max(1, (depth - 1).bit_length())


def read_sig(depth, shape):
    return ReadPort.Signature(addr_width=addr_width(depth), shape=shape)


def write_sig(depth, shape, granularity=None):
    return WritePort.Signature(addr_width=addr_width(depth), shape=shape, granularity=granularity)


class Buffers(wiring.Component):
    """All memories of the core; every port named for the unit that uses it."""

    def __init__(self, cfg: CoreConfig):
        self._cfg = cfg
        sp, wb, ac, tb = spad_row(cfg), wbuf_row(cfg), acc_row(cfg), table_row(cfg)
        super().__init__({
            "spad_rd_matmul": Out(read_sig(cfg.spad_depth, sp)),
            "spad_rd_alu_x": Out(read_sig(cfg.spad_depth, sp)),
            "spad_rd_alu_y": Out(read_sig(cfg.spad_depth, sp)),
            "spad_rd_store": Out(read_sig(cfg.spad_depth, sp)),
            "spad_wr_alu": Out(write_sig(cfg.spad_depth, sp, 1)),
            "spad_wr_load": Out(write_sig(cfg.spad_depth, sp, 1)),
            "spad_load_free": Out(1),
            "wbuf_rd": Out(read_sig(cfg.wbuf_depth, wb)),
            "wbuf_wr": Out(write_sig(cfg.wbuf_depth, wb)),
            "acc_rd_matmul": Out(read_sig(cfg.acc_depth, ac)),
            "acc_rd_alu": Out(read_sig(cfg.acc_depth, ac)),
            "acc_rd_store": Out(read_sig(cfg.acc_depth, ac)),
            "acc_wr_matmul": Out(write_sig(cfg.acc_depth, ac)),
            "acc_wr_load": Out(write_sig(cfg.acc_depth, ac)),
            "acc_load_free": Out(1),
            "table_rd": Out(read_sig(cfg.table_depth, tb)),
            "table_wr": Out(write_sig(cfg.table_depth, tb)),
            **({"lut_rd": Out(read_sig(cfg.lut_depth, LUT_ENTRY)).array(cfg.lanes),
                "lut_wr": Out(write_sig(cfg.lut_depth, LUT_ENTRY))} if cfg.lut_tables else {}),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        m.submodules.spad = spad = Memory(shape=spad_row(cfg), depth=cfg.spad_depth, init=[])
        m.submodules.wbuf = wbuf = Memory(shape=wbuf_row(cfg), depth=cfg.wbuf_depth, init=[])
        m.submodules.acc = acc = Memory(shape=acc_row(cfg), depth=cfg.acc_depth, init=[])
        # A one-entry memory has zero-bit ports, while the units address every memory with
        # at least one bit (addr_width); a second, unreachable entry keeps the widths equal
        # (LOAD refuses table addresses from table_depth on).
        m.submodules.table = table = Memory(shape=table_row(cfg), depth=max(2, cfg.table_depth),
                                            init=[])

        spad_wr = spad.write_port(granularity=1)
        self._arbitrate(m, spad_wr, self.spad_wr_alu, self.spad_wr_load)
        m.d.comb += self.spad_load_free.eq(self.spad_wr_alu.en == 0)
        for name in ("matmul", "alu_x", "alu_y", "store"):
            wiring.connect(m, wiring.flipped(getattr(self, f"spad_rd_{name}")), spad.read_port())

        wiring.connect(m, wiring.flipped(self.wbuf_wr), wbuf.write_port())
        wiring.connect(m, wiring.flipped(self.wbuf_rd), wbuf.read_port())

        acc_wr = acc.write_port()
        self._arbitrate(m, acc_wr, self.acc_wr_matmul, self.acc_wr_load)
        m.d.comb += self.acc_load_free.eq(~self.acc_wr_matmul.en)
        wiring.connect(m, wiring.flipped(self.acc_rd_matmul), acc.read_port(transparent_for=(acc_wr,)))
        wiring.connect(m, wiring.flipped(self.acc_rd_alu), acc.read_port())
        wiring.connect(m, wiring.flipped(self.acc_rd_store), acc.read_port())

        wiring.connect(m, wiring.flipped(self.table_wr), table.write_port())
        wiring.connect(m, wiring.flipped(self.table_rd), table.read_port())
        if cfg.lut_tables:
            self._lookup_tables(m)
        return m

    def _lookup_tables(self, m: Module) -> None:
        """One copy of the lookup tables per lane, written together."""
        for i in range(self._cfg.lanes):
            lut = Memory(shape=LUT_ENTRY, depth=self._cfg.lut_depth, init=[])
            m.submodules[f"lut{i}"] = lut
            wr = lut.write_port()
            m.d.comb += [wr.addr.eq(self.lut_wr.addr), wr.data.eq(self.lut_wr.data),
                         wr.en.eq(self.lut_wr.en)]
            wiring.connect(m, wiring.flipped(self.lut_rd[i]), lut.read_port())

    @staticmethod
    def _arbitrate(m, port, first, second):
        """Drive ``port`` from ``first`` when it writes, else from ``second``."""
        with m.If(first.en != 0):
            m.d.comb += [port.addr.eq(first.addr), port.data.eq(first.data), port.en.eq(first.en)]
        with m.Else():
            m.d.comb += [port.addr.eq(second.addr), port.data.eq(second.data), port.en.eq(second.en)]
