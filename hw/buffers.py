"""The on-chip memories: activation scratchpad, weight buffer, accumulator memory,
shift table and lookup tables, with their read ports and the write-port arbitration.

Reads are synchronous: the data is valid in the cycle after the address (the
scratchpad's and the accumulators' only then; the others' until the port reads
again). The scratchpad's single write port is shared by the vector unit (priority)
and the loader; the accumulator's by the matmul writeback (priority; the array never
stalls) and the loader. The matmul's accumulator read port is transparent for the
write port, so a row accumulated on consecutive cycles reads its newest value.

The scratchpad and the accumulators are built as banks (:data:`fxpgen.isa.PORT_REGIONS`
regions each), each bank a memory with one read and one write port, the ports a
block RAM has. Every unit's read port reaches every bank: a read goes to the bank
of its address. The controller never lets two units hold one bank's read port
(:mod:`fxpgen.hw.hazards`), and the vector unit reads its two scratchpad operands
from one bank on alternate cycles, so a bank serves at most one read a cycle. Built
with ``banked=False`` (for a device short of logic cells rather than block RAM), each of
the two is one memory with a read port per unit instead, which the synthesis tools
copy per read port: no crossbar; the same results and the same cycles, the
controller's read-port rule being kept.

The lookup tables are one ``lut_depth`` x 8-bit memory per scratchpad lane, all
written together by LOAD: every lane looks up its own byte in the same cycle, and a
single-ported copy per lane maps to one block RAM each (a shared multi-read memory
would be replicated per read port by the synthesis tools anyway).
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import Out

from fxpgen.config import REGIONS, CoreConfig
from fxpgen.isa import PORT_REGIONS, Mem

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

    def __init__(self, cfg: CoreConfig, banked: bool = True):
        self._cfg = cfg
        self._banked = banked
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
        m.submodules.wbuf = wbuf = Memory(shape=wbuf_row(cfg), depth=cfg.wbuf_depth, init=[])
        # A one-entry memory has zero-bit ports, while the units address every memory with
        # at least one bit (addr_width); a second, unreachable entry keeps the widths equal
        # (LOAD refuses table addresses from table_depth on).
        m.submodules.table = table = Memory(shape=table_row(cfg), depth=max(2, cfg.table_depth),
                                            init=[])

        spad_wr = write_sig(cfg.spad_depth, spad_row(cfg), 1).create(path=("spad_wr",))
        self._arbitrate(m, spad_wr, self.spad_wr_alu, self.spad_wr_load)
        m.d.comb += self.spad_load_free.eq(self.spad_wr_alu.en == 0)
        per_bank = PORT_REGIONS[Mem.SPAD] if self._banked else REGIONS
        self._memory(m, "spad", spad_row(cfg), cfg.spad_depth, per_bank, spad_wr,
                     [getattr(self, f"spad_rd_{name}") for name in ("matmul", "alu_x", "alu_y", "store")],
                     granularity=1)

        wiring.connect(m, wiring.flipped(self.wbuf_wr), wbuf.write_port())
        wiring.connect(m, wiring.flipped(self.wbuf_rd), wbuf.read_port())

        acc_wr = write_sig(cfg.acc_depth, acc_row(cfg)).create(path=("acc_wr",))
        self._arbitrate(m, acc_wr, self.acc_wr_matmul, self.acc_wr_load)
        m.d.comb += self.acc_load_free.eq(~self.acc_wr_matmul.en)
        per_bank = PORT_REGIONS[Mem.ACC] if self._banked else REGIONS
        self._memory(m, "acc", acc_row(cfg), cfg.acc_depth, per_bank, acc_wr,
                     [self.acc_rd_matmul, self.acc_rd_alu, self.acc_rd_store], transparent=True)

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
    def _memory(m: Module, name: str, shape, depth: int, per_bank: int, wr, readers: list,
                granularity=None, transparent: bool = False) -> None:
        """A ``depth``-row memory as banks of ``per_bank`` regions, each with one
        read port (transparent for its write port with ``transparent``) and one write
        port; the write ``wr`` and every reader go to the bank of their address. One
        bank (``per_bank`` all regions): one memory, a read port per reader."""
        banks = REGIONS // per_bank
        if banks == 1:
            mem = Memory(shape=shape, depth=depth, init=[])
            m.submodules[name] = mem
            wp = mem.write_port(granularity=granularity)
            m.d.comb += [wp.addr.eq(wr.addr), wp.data.eq(wr.data), wp.en.eq(wr.en)]
            for r in readers:
                wiring.connect(m, wiring.flipped(r), mem.read_port(transparent_for=(wp,) if transparent else ()))
            return
        bank_depth = depth // banks
        low = (bank_depth - 1).bit_length()           # row within the bank

        def bank_of(addr):
            return addr[low:low + (banks - 1).bit_length()]

        def row_of(addr):
            return addr[:low] if low else C(0, 1)
        outs = []
        for b in range(banks):
            mem = Memory(shape=shape, depth=max(2, bank_depth), init=[])
            m.submodules[f"{name}{b}"] = mem
            wp = mem.write_port(granularity=granularity)
            m.d.comb += [wp.addr.eq(row_of(wr.addr)), wp.data.eq(wr.data),
                         wp.en.eq(Mux(bank_of(wr.addr) == b, wr.en, 0))]
            rp = mem.read_port(transparent_for=(wp,) if transparent else ())
            m.d.comb += rp.en.eq(0)
            # Hazards keep the requests one-hot: the first is taken.
            for r in reversed(readers):
                with m.If(r.en & (bank_of(r.addr) == b)):
                    m.d.comb += [rp.addr.eq(row_of(r.addr)), rp.en.eq(1)]
            outs.append(rp.data.as_value())
        for i, r in enumerate(readers):
            bank = Signal(range(banks), name=f"{name}_rd{i}_bank")
            m.d.sync += bank.eq(bank_of(r.addr))
            m.d.comb += r.data.eq(Array(outs)[bank])

    @staticmethod
    def _arbitrate(m, port, first, second):
        """Drive ``port`` from ``first`` when it writes, else from ``second``."""
        with m.If(first.en != 0):
            m.d.comb += [port.addr.eq(first.addr), port.data.eq(first.data), port.en.eq(first.en)]
        with m.Else():
            m.d.comb += [port.addr.eq(second.addr), port.data.eq(second.data), port.en.eq(second.en)]
