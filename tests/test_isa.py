"""The fast Python packing of instruction words equals Amaranth's packing of the
same layout, and decoding inverts it."""

import random

from fxpgen.config import CoreConfig
from fxpgen.isa import Instruction
from fxpgen.sim.randprog import ERROR_KINDS, random_error_program, random_program


def test_fast_encode_matches_layout_const_and_decode_inverts(seed):
    rng = random.Random(seed)
    for rows, cols in ((2, 2), (4, 8), (8, 4)):
        cfg = CoreConfig(rows=rows, cols=cols, spad_depth=64, wbuf_depth=32, acc_depth=64, table_depth=4)
        insns = [i for _ in range(30) for i in random_program(cfg, rng).instructions]
        insns += [i for k in ERROR_KINDS for i in random_error_program(cfg, rng, k).instructions
                  if isinstance(i, Instruction)]
        for insn in insns:
            word = insn.encode(cfg)
            assert word == insn.encode_const(cfg), insn
            back = Instruction.decode(word)
            assert back.encode() == word
            assert {k: back.params[k] for k in insn.params} == insn.params
            full = insn.with_regions(cfg)
            assert (back.opcode, back.count0, back.count1, back.x, back.y, back.z) == \
                (full.opcode, full.count0, full.count1, full.x, full.y, full.z)
