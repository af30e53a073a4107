"""The proofs fxpgen ships, each with its configuration and its mutation twin.

Every proof runs twice: on the shipped design, where it must PASS, and on a
deliberately broken copy (a mutant), where it must FAIL; a proof whose mutant
passes could not have failed and proves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .addrgen import AddrGenHarness, check_address_off_by_one
from .array import ArrayHarness, BankBlindArray
from .bridge import BridgeHarness, CrcBlindReceiver
from .dispatch import BankBlindController, DispatchHarness
from .footprint import FootprintHarness
from .memory import LoadSafety, LoadwSafety, MatmulSafety, StoreSafety, VectorSafety
from .requant import RequantHarness, TieUpRequantizer
from .sby import Verdict, run_sby
from .streams import SenderHarness, reply_harness, store_harness, word_buffer_harness

__all__ = ["Proof", "ProofResult", "PROOFS", "prove"]


@dataclass(frozen=True)
class Proof:
    """A property, the harness that states it, and the k-induction ``depth``.
    ``harness()`` builds it on the shipped design, ``mutant()`` on the mutant
    that ``mutation`` describes (run ``mutant_depth`` deep, default ``depth``)."""

    name: str
    claim: str
    depth: int
    harness: Callable[[], object]
    mutant: Callable[[], object]
    mutation: str
    #: Depth of the mutant's run: deep enough for a reachable counterexample.
    mutant_depth: int | None = None


@dataclass(frozen=True)
class ProofResult:
    """A proof's verdict and its mutant's (None when the mutant was not run)."""

    proof: Proof
    verdict: Verdict
    mutant: Verdict | None

    @property
    def ok(self) -> bool:
        """Proven, and the mutant (if run) caught."""
        return self.verdict.passed and (self.mutant is None or self.mutant.status == "FAIL")


PROOFS: dict[str, Proof] = {p.name: p for p in [
    Proof("requant", "requantizer (acc_width 16, one lane) equals numerics' arithmetic", 6,
          lambda: RequantHarness(16), lambda: RequantHarness(16, TieUpRequantizer),
          "ties rounded up instead of to even"),
    Proof("array", "3x3 array columns accumulate exactly, latency rows + cols", 8,
          lambda: ArrayHarness(3, 3), lambda: ArrayHarness(3, 3, BankBlindArray),
          "PEs ignore the weight bank"),
    Proof("addrgen", "16-bit address loops are exact; checks pass only in-memory, in-region",
          3, lambda: AddrGenHarness(16), lambda: AddrGenHarness(16, check_address_off_by_one),
          "depth check off by one"),
    Proof("streams", "the core's result stream (store unit, 2x2 core) keeps stalled words", 4,
          lambda: store_harness(), lambda: store_harness(mutant=True),
          "unit told every word is taken", mutant_depth=10),
    Proof("wordbuffer", "the bridge's word buffers (core insn/data streams) keep stalled words", 4,
          lambda: word_buffer_harness(), lambda: word_buffer_harness(mutant=True),
          "buffer told every word is taken", mutant_depth=10),
    Proof("reply", "the bridge's reply requests (receiver to sender) keep a reply until it is taken", 4,
          lambda: reply_harness(), lambda: reply_harness(mutant=True),
          "a new reply replaces one not yet taken", mutant_depth=14),
    *(Proof(f"footprint-{unit}", f"every {unit.upper()} memory access inside the footprint it reports",
            4, lambda unit=unit: FootprintHarness(unit), lambda unit=unit: FootprintHarness(unit, mutant=True),
            "a memory left out of the reported mask", mutant_depth=8)
      for unit in ("store", "load", "loadw")),
    *(Proof(f"memory-{cls.NAME}", f"every {cls.NAME.upper()} access inside its memory, declared regions, masks",
            2,
            cls, lambda cls=cls: cls(mutant=True), "depth check off by one", mutant_depth=8)
      for cls in (StoreSafety, LoadSafety, LoadwSafety, MatmulSafety, VectorSafety)),
    Proof("sender", "the bridge's UART byte stream keeps a stalled byte (result word held, counters frozen)",
          4, lambda: SenderHarness(), lambda: SenderHarness(mutant=True),
          "sender told every byte is taken", mutant_depth=10),
    Proof("dispatch", "the controller never dispatches into a hazard (units by their contracts)", 2,
          lambda: DispatchHarness(), lambda: DispatchHarness(BankBlindController),
          "weight banks left out of the dispatched write mask", mutant_depth=8),
    Proof("bridge", "UART frame receiver commits no frame whose CRC fails", 4,
          lambda: BridgeHarness(), lambda: BridgeHarness(CrcBlindReceiver),
          "CRC not compared", mutant_depth=14),
]}


def prove(proof: Proof, workdir: Path, mutant: bool = True) -> ProofResult:
    """Run ``proof`` (and its mutant unless ``mutant`` is False) in ``workdir``."""
    verdict = run_sby(proof.name, proof.harness(), workdir, proof.depth)
    broken = (run_sby(f"{proof.name}-mutant", proof.mutant(), workdir, proof.mutant_depth or proof.depth)
              if mutant else None)
    return ProofResult(proof, verdict, broken)
