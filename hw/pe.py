"""One processing element of the weight-stationary array: an 8-bit x 9-bit
multiply-accumulate with two weight banks.

Activations enter from the left with the bank they use, partial sums from above;
both leave registered (right and down). The product is registered before the add,
so the multiplier (a DSP block on FPGAs, with its output register) and the adder
are separate pipeline stages and the array is not the critical path. Weights load by shifting upward through the
column, one bank at a time, so a tile loads into one bank while the other computes.
"""

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["ProcessingElement", "ACT_WIDTH", "build_pe"]

#: Activations are int8 or uint8, sign-extended to 9 bits on entry to the array.
ACT_WIDTH = 9


def build_pe(m: Module, *, act_in, bank_in, psum_in, w_in, w_load, w_load_bank,
             act_out, bank_out, psum_out, w_out, name: str = ""):
    """Add one PE's logic to ``m`` (shared by :class:`ProcessingElement` and the
    array, which builds its grid inline to keep the simulator fast).

    Cycle 1: ``product <= w[bank_in] * act_in``; the activation and its bank move one
    PE to the right. Cycle 2: ``psum_out <= psum_in + product``, so ``psum_in`` must
    arrive one cycle after the activation (it does: the PE above is one cycle
    earlier and two cycles deep). Loading shifts bank ``w_load_bank`` upward.
    """
    w = [Signal(signed(8), name=f"{name}w{b}") for b in range(2)]
    product = Signal(signed(8 + ACT_WIDTH), name=f"{name}product")
    m.d.sync += [
        act_out.eq(act_in),
        bank_out.eq(bank_in),
        product.eq(Mux(bank_in, w[1], w[0]) * act_in),
        psum_out.eq(psum_in + product),
    ]
    with m.If(w_load):
        with m.If(w_load_bank):
            m.d.sync += w[1].eq(w_in)
        with m.Else():
            m.d.sync += w[0].eq(w_in)
    m.d.comb += w_out.eq(Mux(w_load_bank, w[1], w[0]))
    return w


class ProcessingElement(wiring.Component):
    """A single PE, for unit tests and documentation; the array uses :func:`build_pe`.

    Parameters
    ----------
    psum_width : int
        Bits of the partial sum flowing down the column.
    """

    #: Cycles from ``act_in`` to the ``psum_out`` that includes its product.
    LATENCY = 2

    def __init__(self, psum_width: int):
        if psum_width < 17:
            raise ValueError(f"psum_width must be at least 17 (one 8x9-bit product), not {psum_width}")
        self._psum_width = psum_width
        super().__init__({
            "act_in": In(signed(ACT_WIDTH)),
            "bank_in": In(1),
            "psum_in": In(signed(psum_width)),
            "w_in": In(signed(8)),
            "w_load": In(1),
            "w_load_bank": In(1),
            "act_out": Out(signed(ACT_WIDTH)),
            "bank_out": Out(1),
            "psum_out": Out(signed(psum_width)),
            "w_out": Out(signed(8)),
        })

    @property
    def psum_width(self) -> int:
        return self._psum_width

    def elaborate(self, platform):
        m = Module()
        build_pe(m, act_in=self.act_in, bank_in=self.bank_in, psum_in=self.psum_in,
                 w_in=self.w_in, w_load=self.w_load, w_load_bank=self.w_load_bank,
                 act_out=self.act_out, bank_out=self.bank_out, psum_out=self.psum_out,
                 w_out=self.w_out)
        return m
