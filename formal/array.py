"""Proof 2: every column of the systolic array accumulates exactly.

:class:`ArrayHarness` drives a ``rows x cols`` :class:`~fxpgen.hw.array.SystolicArray`
with free activations, banks and weight loads, and keeps a shadow of both weight
banks that follows the documented loading rule (a loaded row enters array row
``rows - 1`` and every row of that bank moves one up). It asserts, on every cycle:

- weights: every PE's two weight registers equal the shadow;
- routing: PE ``(i, j)`` sees element ``i`` and the bank of the vector that
  entered ``i + j`` cycles before;
- accumulation: when ``psum.valid`` is high, column ``j`` equals the sum over the
  rows of the products PE ``(i, j)`` formed from those operands, for the vector
  that entered ``LATENCY = rows + cols`` cycles before.

Together: ``psum[j] == sum_i w[bank][i][j] * act[i]`` exactly. The product of two
proven-equal operand pairs is not proven again: the harness forms it with the same
``*`` as the PE, so the solver sees one multiplier (re-proving a multiplier
against another is out of reach of the solver in reasonable time).

The harness assumes the compiler's contract that a bank is not reloaded while a
vector that uses it is still in the array (``LATENCY`` cycles after it entered).
The PEs' signals are read by wrapping :func:`~fxpgen.hw.pe.build_pe` while the
array elaborates; the array itself is unchanged.
"""

from __future__ import annotations

import re
from unittest import mock

from amaranth import *
from amaranth.hdl import Assert, Assume
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In

from fxpgen.hw import array as array_module
from fxpgen.hw.array import SystolicArray
from fxpgen.hw.pe import ACT_WIDTH

__all__ = ["ArrayHarness", "ObservedArray", "BankBlindArray"]

_ship_build_pe = array_module.build_pe


class ObservedArray(SystolicArray):
    """The shipped array; after :meth:`elaborate`, ``pe[(i, j)]`` holds PE ``(i, j)``'s
    ports (the keyword arguments of ``build_pe``) and ``w``, its two weight registers."""

    def _build_pe(self, m, **kwargs):
        return _ship_build_pe(m, **kwargs)

    def elaborate(self, platform):
        self.pe = {}

        def observe(m, *, name, **kwargs):
            i, j = map(int, re.fullmatch(r"pe_(\d+)_(\d+)_", name).groups())
            w = self._build_pe(m, name=name, **kwargs)
            self.pe[(i, j)] = {**kwargs, "w": w}
            return w

        with mock.patch.object(array_module, "build_pe", observe):
            return super().elaborate(platform)


class BankBlindArray(ObservedArray):
    """Mutant: every PE multiplies with bank 0, whatever bank the vector names."""

    def _build_pe(self, m, **kwargs):
        return _ship_build_pe(m, **{**kwargs, "bank_in": C(0, 1)})


def _delay(m: Module, value, cycles: int, name: str):
    for k in range(cycles):
        reg = Signal.like(value, name=f"{name}_d{k}")
        m.d.sync += reg.eq(value)
        value = reg
    return value


class ArrayHarness(wiring.Component):
    """Free inputs into a ``rows x cols`` array (``dut_class``); see the module doc."""

    def __init__(self, rows: int, cols: int, dut_class: type[ObservedArray] = ObservedArray):
        self._rows, self._cols, self._dut_class = rows, cols, dut_class
        self._psum_width = 17 + (rows - 1).bit_length()
        super().__init__({
            "act": In(data.StructLayout({
                "valid": 1, "bank": 1, "data": data.ArrayLayout(signed(ACT_WIDTH), rows)})),
            "weights": In(data.StructLayout({
                "valid": 1, "bank": 1, "data": data.ArrayLayout(signed(8), cols)})),
        })

    def _shadow(self, m):
        """Both banks' weights as the loading rule places them: ``[bank][row][col]``."""
        R, C_ = self._rows, self._cols
        shadow = [[[Signal(signed(8), name=f"shadow_b{b}_{i}_{j}") for j in range(C_)]
                   for i in range(R)] for b in range(2)]
        for b in range(2):
            with m.If(self.weights.valid & (self.weights.bank == b)):
                for j in range(C_):
                    for i in range(R - 1):
                        m.d.sync += shadow[b][i][j].eq(shadow[b][i + 1][j])
                    m.d.sync += shadow[b][R - 1][j].eq(self.weights.data[j])
        return shadow

    def _no_reload_in_flight(self, m, latency: int):
        """Assume no load of a bank within ``latency`` cycles of a vector using it."""
        for b in range(2):
            since = Signal(range(latency + 2), init=latency + 1, name=f"since_bank{b}")
            uses = self.act.valid & (self.act.bank == b)
            with m.If(uses):
                m.d.sync += since.eq(0)
            with m.Elif(since <= latency):
                m.d.sync += since.eq(since + 1)
            busy = uses | (since < latency)
            m.d.comb += Assume(~(self.weights.valid & (self.weights.bank == b) & busy))

    def elaborate(self, platform):
        m = Module()
        R, C_ = self._rows, self._cols
        dut = self._dut_class(R, C_, self._psum_width)
        # Elaborated here, not lazily, so that its PEs' signals are known.
        m.submodules.dut = Fragment.get(dut, platform)
        m.d.comb += [dut.act.eq(self.act), dut.weights.eq(self.weights)]
        shadow = self._shadow(m)
        self._no_reload_in_flight(m, dut.LATENCY)
        L = dut.LATENCY
        vectors = [self.act]
        for k in range(L):
            vectors.append(_delay(m, vectors[-1], 1, f"vector{k}"))
        m.d.comb += Assert(dut.psum.valid == vectors[L].valid, "psum.valid LATENCY cycles later")
        for j in range(C_):
            exact = C(0, signed(self._psum_width))
            for i in range(R):
                pe = dut.pe[(i, j)]
                seen = vectors[i + j]
                for b in range(2):
                    m.d.comb += Assert(pe["w"][b] == shadow[b][i][j], f"PE {i},{j} bank {b} weight")
                m.d.comb += [Assert(pe["act_in"] == seen.data[i], f"PE {i},{j} activation"),
                             Assert(pe["bank_in"] == seen.bank, f"PE {i},{j} bank")]
                product = Signal(signed(8 + ACT_WIDTH), name=f"product_{i}_{j}")
                m.d.comb += product.eq(Mux(pe["bank_in"], pe["w"][1], pe["w"][0]) * pe["act_in"])
                total = Signal(signed(self._psum_width), name=f"exact_{i}_{j}")
                m.d.comb += total.eq(exact + _delay(m, product, L - i - j, f"product_{i}_{j}"))
                exact = total
            with m.If(vectors[L].valid):
                m.d.comb += Assert(dut.psum.data[j] == exact, f"column {j} sum of products")
        return m
