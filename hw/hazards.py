"""Hazard resources: which memory regions and weight banks an instruction reads
and writes, as bit masks the controller compares between units.

Bit layout: SPAD regions 0-3, WBUF regions 4-7, ACC regions 8-11, TABLE 12, LUT 13,
weight banks 14-15, scratchpad read ports 16-19, accumulator read ports 20-21. The
masks come from the instruction's declared region masks (:func:`fxpgen.isa.footprint`
is the Python twin; a test keeps them equal). A unit holding a read port
(:data:`fxpgen.isa.PORT_REGIONS`) reports it among its writes, so a second reader
of that memory bank waits as it would for a writer.
"""

from amaranth import *

from fxpgen.config import REGIONS
from fxpgen.isa import Mem, OPCODE_INFO, Opcode, PARAMS_VIEW, PORT_REGIONS, UNREGIONED

__all__ = ["HAZARD_BITS", "MEM_BASE", "TABLE_BIT", "LUT_BIT", "BANK_BASE", "PORT_BASE", "mem_bits",
           "port_bits", "bank_bit",
           "insn_footprint", "resource_index"]

MEM_BASE = {Mem.SPAD: 0, Mem.WBUF: REGIONS, Mem.ACC: 2 * REGIONS}
TABLE_BIT = 3 * REGIONS
LUT_BIT = TABLE_BIT + 1
#: The one hazard bit of each memory that is a single region.
SINGLE_BIT = {Mem.TABLE: TABLE_BIT, Mem.LUT: LUT_BIT}
BANK_BASE = LUT_BIT + 1
PORT_BASE = {Mem.SPAD: BANK_BASE + 2, Mem.ACC: BANK_BASE + 2 + REGIONS // PORT_REGIONS[Mem.SPAD]}
HAZARD_BITS = PORT_BASE[Mem.ACC] + REGIONS // PORT_REGIONS[Mem.ACC]


def resource_index(res) -> int:
    """Bit index of a footprint resource ``(Mem, region)`` or ``("BANK", b)``."""
    kind, k = res
    if kind == "BANK":
        return BANK_BASE + k
    if kind in ("SPAD_PORT", "ACC_PORT"):
        return PORT_BASE[Mem[kind.removesuffix("_PORT")]] + k
    if Mem(kind) in UNREGIONED:
        return SINGLE_BIT[Mem(kind)]
    return MEM_BASE[Mem(kind)] + k


def mem_bits(mem, regions) -> Value:
    """Mask for ``regions`` of ``mem`` (a Mem member or a Mem-valued signal)."""
    regions = Value.cast(regions)[:REGIONS]
    if isinstance(mem, Mem):
        if mem in UNREGIONED:
            return Const(1 << SINGLE_BIT[mem], HAZARD_BITS)
        return (regions << MEM_BASE[mem])[:HAZARD_BITS]
    mem = Value.cast(mem)
    return Mux(mem == Mem.TABLE, 1 << TABLE_BIT, Mux(mem == Mem.LUT, 1 << LUT_BIT,
               Mux(mem == Mem.SPAD, regions << MEM_BASE[Mem.SPAD],
                   Mux(mem == Mem.WBUF, regions << MEM_BASE[Mem.WBUF],
                       regions << MEM_BASE[Mem.ACC]))))[:HAZARD_BITS]


def port_bits(mem, regions) -> Value:
    """Mask of the read ports serving ``regions`` of ``mem`` (a Mem member or a
    Mem-valued signal; none for the memories without port claims)."""
    regions = Value.cast(regions)[:REGIONS]

    def of(mm: Mem) -> Value:
        per = PORT_REGIONS[mm]
        banks = Cat(*(regions[k * per:(k + 1) * per].any() for k in range(REGIONS // per)))
        return (banks << PORT_BASE[mm])[:HAZARD_BITS]
    if isinstance(mem, Mem):
        return of(mem) if mem in PORT_REGIONS else Const(0, HAZARD_BITS)
    mem = Value.cast(mem)
    return Mux(mem == Mem.SPAD, of(Mem.SPAD), Mux(mem == Mem.ACC, of(Mem.ACC), 0))[:HAZARD_BITS]


def bank_bit(bank) -> Value:
    return (Const(1, HAZARD_BITS) << (BANK_BASE + Value.cast(bank)))[:HAZARD_BITS]


def insn_footprint(m: Module, insn, name: str = "fp"):
    """Read and write masks of a decoded instruction view (see :data:`OPCODE_INFO`)."""
    reads = Signal(HAZARD_BITS, name=f"{name}_reads")
    writes = Signal(HAZARD_BITS, name=f"{name}_writes")
    with m.Switch(insn.opcode):
        for op, info in OPCODE_INFO.items():
            with m.Case(op.value):
                r, w = Const(0, HAZARD_BITS), Const(0, HAZARD_BITS)
                params = getattr(insn.params, PARAMS_VIEW[op]) if op in PARAMS_VIEW else None
                for stream, (mem, access) in info.streams.items():
                    if isinstance(mem, str):
                        mem = getattr(params, mem)
                    regions = getattr(insn, stream).regions
                    bits = mem_bits(mem, regions)
                    ports = port_bits(mem, regions)
                    if op is Opcode.REQUANT and stream == "y":
                        bits, ports = Mux(params.residual, bits, 0), Mux(params.residual, ports, 0)
                    if access == "r":
                        r = r | bits
                    else:
                        w = w | bits
                    if access == "r" or op is Opcode.MATMUL:
                        w = w | ports
                if op is Opcode.REQUANT:
                    r = r | (1 << TABLE_BIT)
                if op is Opcode.LUT:
                    r = r | (1 << LUT_BIT)
                if op is Opcode.LOADW:
                    w = w | bank_bit(params.bank)
                if op is Opcode.MATMUL:
                    r = r | bank_bit(params.bank)
                m.d.comb += [reads.eq(r), writes.eq(w)]
    return reads, writes
