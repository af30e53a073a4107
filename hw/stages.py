"""The pipeline registers on the core's long paths, and the unit latencies they set.

On an FPGA a block RAM's clock-to-out, a DSP multiplier and the requantizer's
alignment shifters each take most of a cycle at 100 MHz, so the fast core puts a
register after each (:data:`FAST`). A small, slow device (the iCEBreaker's UP5K, a
few hundred logic cells short) drops them all (:data:`COMPACT`): results are the
same, only the latencies below differ. The cycle counts of the units follow from
these counts and nothing else.
"""

from dataclasses import dataclass

__all__ = ["Stages", "FAST", "COMPACT"]


@dataclass(frozen=True)
class Stages:
    """Register stages (each 0 or more) on the core's long paths.

    vector_read
        After the vector unit's memory reads (scratchpad rows, accumulator row,
        shift-table entry), before the lane operands are built.
    vector_operands
        Between the lane operands (MUL's products, LUT's looked-up bytes) and the
        requantizer.
    matmul_act
        Between the scratchpad row MATMUL reads and the array's activation input.
    acc_read
        Between the accumulator row MATMUL reads and its write-back adder; the
        write-backs in between are forwarded.
    """

    vector_read: int = 1
    vector_operands: int = 1
    matmul_act: int = 1
    acc_read: int = 1

    def __post_init__(self):
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, not {value!r}")

    def vector_write_delay(self, requant_latency: int) -> int:
        """Cycles from a vector-unit iteration's reads to its scratchpad write."""
        return 1 + self.vector_read + self.vector_operands + requant_latency

    def matmul_write_delay(self, array_latency: int) -> int:
        """Cycles from a MATMUL vector's scratchpad read to its accumulator write."""
        return 1 + self.matmul_act + array_latency


#: Every path registered: the default, for FPGAs with block RAMs and DSPs to spare.
FAST = Stages()
#: No added registers: the smallest core, for slow clocks on small devices.
COMPACT = Stages(0, 0, 0, 0)
