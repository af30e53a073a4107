"""Block-level tests of the memories (``hw/buffers.py``) in Amaranth's simulator:
random reads and writes on every port at once against a Python model of the
documented behaviour, on memories a few rows deep so that ports collide often.
The scratchpad and accumulator banks each serve one read a cycle (the controller's
read-port claims see to it), so the random reads keep to that."""

import random

import pytest

from fxpgen.config import CoreConfig
from fxpgen.hw.buffers import Buffers
from fxpgen.isa import PORT_REGIONS, Mem, region_of

from unit_harness import config_id, simulate

CONFIGS = [
    CoreConfig(rows=2, cols=2, acc_width=18, spad_depth=4, wbuf_depth=4, acc_depth=4, table_depth=3),
    CoreConfig(rows=2, cols=4, acc_width=20, spad_depth=8, wbuf_depth=4, acc_depth=4, table_depth=2),
]

CYCLES = 400

#: Read ports: name, memory, transparent to that memory's write port.
READS = [("spad_rd_matmul", "spad", False), ("spad_rd_alu_x", "spad", False),
         ("spad_rd_alu_y", "spad", False), ("spad_rd_store", "spad", False),
         ("wbuf_rd", "wbuf", False), ("acc_rd_matmul", "acc", True),
         ("acc_rd_alu", "acc", True), ("acc_rd_store", "acc", True), ("table_rd", "table", False)]

#: Write ports of each memory, highest priority first.
WRITES = {"spad": ["spad_wr_alu", "spad_wr_load"], "wbuf": ["wbuf_wr"],
          "acc": ["acc_wr_matmul", "acc_wr_load"], "table": ["table_wr"]}


@pytest.mark.parametrize("banked", [True, False], ids=["banked", "copies"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_buffers_match_model(cfg, banked, seed):
    """Every read returns, one cycle after its address, the row as it was before the
    cycle's write, except the accumulator ports, which see that write; a port of the
    weight buffer or the table without ``en`` holds its data. The scratchpad writes the vector unit's
    lanes when it writes any, else the loader's (whose lanes are then dropped), and
    ``spad_load_free`` says so; the accumulators likewise give the matmul write-back
    priority over the loader (``acc_load_free``). Memories start all zero."""
    rng = random.Random(seed)
    dut = Buffers(cfg, banked)
    depth = {"spad": cfg.spad_depth, "wbuf": cfg.wbuf_depth, "acc": cfg.acc_depth,
             "table": cfg.table_depth}
    rows = {mem: [0] * d for mem, d in depth.items()}
    held = {name: 0 for name, _, _ in READS}

    def port(name):
        return getattr(dut, name)

    async def bench(ctx):
        for _ in range(CYCLES):
            writes = {}
            for mem, names in WRITES.items():
                for name in names:
                    p = port(name)
                    lanes, width = len(p.en), len(p.data.as_value())
                    en = rng.getrandbits(lanes) if rng.random() < 0.5 else 0
                    addr, value = rng.randrange(depth[mem]), rng.getrandbits(width)
                    ctx.set(p.en, en)
                    ctx.set(p.addr, addr)
                    ctx.set(p.data.as_value(), value)
                    writes[name] = (en, addr, value, lanes, width)
            reads = {}
            taken = set()
            for name, mem, _ in rng.sample(READS, len(READS)):
                en, addr = rng.random() < 0.7, rng.randrange(depth[mem])
                if mem in ("spad", "acc"):
                    bank = (mem, region_of(addr, depth[mem]) // PORT_REGIONS[Mem[mem.upper()]])
                    en = en and bank not in taken
                    if en:
                        taken.add(bank)
                ctx.set(port(name).en, en)
                ctx.set(port(name).addr, addr)
                reads[name] = (en, addr)
            assert ctx.get(dut.spad_load_free) == (writes["spad_wr_alu"][0] == 0)
            assert ctx.get(dut.acc_load_free) == (writes["acc_wr_matmul"][0] == 0)

            before = {mem: list(r) for mem, r in rows.items()}
            for mem, names in WRITES.items():
                winner = next((n for n in names if writes[n][0]), None)
                if winner is None:
                    continue
                en, addr, value, lanes, width = writes[winner]
                gran = width // lanes
                mask = sum(((1 << gran) - 1) << (gran * i) for i in range(lanes) if en >> i & 1)
                rows[mem][addr] = (rows[mem][addr] & ~mask) | (value & mask)
            for name, mem, transparent in READS:
                en, addr = reads[name]
                if en:
                    held[name] = (rows if transparent else before)[mem][addr]
            await ctx.tick()
            for name, mem, _ in READS:
                # The banked memories' data is valid only the cycle after a read.
                if reads[name][0] or mem not in ("spad", "acc"):
                    assert ctx.get(port(name).data.as_value()) == held[name], name

    simulate(dut, bench)
