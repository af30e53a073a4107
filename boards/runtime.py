"""Running programs on a board through :class:`fxpgen.boards.host.BoardLink`: a
random GEMM checked bit for bit (``fxpgen check --port``) and compiled networks
(``fxpgen run --engine board``)."""

from __future__ import annotations

import numpy as np

from fxpgen.isa import ErrorCode
from fxpgen.sim.segments import resolve_data

from .host import BoardLink, open_serial
from .protocol import ProtocolError

__all__ = ["connect", "board_check", "run_images"]

DEFAULT_BAUD = 1_000_000


def connect(port: str, baud: int = DEFAULT_BAUD, timeout: float = 2.0) -> BoardLink:
    """Open ``port`` and ask the board what it is (INFO), with a clear error when
    nothing answers."""
    ser = open_serial(port, baud, timeout)
    try:
        link = BoardLink(ser, timeout=timeout)
    except ProtocolError as e:
        raise RuntimeError(f"no fxpgen board answering on {port} at {baud} baud: {e}") from None
    link.reset()
    return link


def board_check(link: BoardLink, m: int, k: int, n: int, *, seed: int = 0) -> dict:
    """A random int8 GEMM on the board against the golden model (as ``fxpgen check``)."""
    from fxpgen.compiler.gemm import build_gemm, gemm_reference, random_gemm
    cfg = link.cfg
    a, b, shift = random_gemm(m, k, n, seed)
    program = build_gemm(cfg, a, b, shift)
    golden = gemm_reference(a, b, shift, cfg.acc_width)
    run = link.execute(program.words, program.data, n_results=program.n_results)
    got = program.decode_results(run.results) if len(run.results) == program.n_results else None
    c = run.status["counters"]
    ideal = m * k * n / (cfg.rows * cfg.cols)
    return {
        "config": cfg.as_dict(),
        "gemm": {"m": m, "k": k, "n": n, "seed": seed},
        "bit_identical": got is not None and bool(np.array_equal(got, golden)),
        "error": ErrorCode(run.status["error"]).name,
        "cycles": c["cycles"], "ideal_cycles": ideal,
        "utilization": ideal / c["cycles"] if c["cycles"] else 0.0,
        "mac_cycles": c["mac_cycles"], "instructions": len(program.words), "insns_executed": c["insns"],
        "frames_rejected": run.rejected,
    }


def run_images(link: BoardLink, program, inputs: list, *, baked: bool = False,
               progress=None) -> tuple[list[np.ndarray], list[list[dict]]]:
    """Run inputs through a runnable program (:class:`fxpgen.sim.engine.Runnable`) on
    the board. Returns the decoded outputs and, per input, the counters per layer
    (read at each layer's HALT; none with ``baked``: the board's ROM program runs
    without pausing)."""
    if link.cfg != program.cfg:
        raise RuntimeError(f"the board's core ({link.cfg.name}) is not the one the program was "
                           f"compiled for ({program.cfg.name})")
    if baked and link.info["rom_insns"] != len(program.words):
        raise RuntimeError(f"the board's baked program has {link.info['rom_insns']} instructions, "
                           f"this one {len(program.words)}: rebuild the bitstream with --program")
    outs, layers = [], []
    for x in inputs:
        segs = program.segments(x)
        if baked:
            run = link.run_baked(_image_words(program, x), n_results=sum(s.n_results for s in segs),
                                 n_halts=len(segs))
            outs.append(program.decode(run.results))
            layers.append([])           # the ROM runs every layer without a pause to read them
        else:
            res, per_layer = [], []
            for seg in segs:
                run = link.execute(seg.words, resolve_data(seg, res), n_results=seg.n_results)
                res += run.results
                per_layer.append({"layer": seg.layer, **run.status["counters"]})
            outs.append(program.decode(res))
            layers.append(per_layer)
        if progress:
            progress(1)
    return outs, layers


def _image_words(program, x) -> list[int]:
    """The input's own words (a baked program holds the constants in ROM)."""
    return program.view.image_words(np.asarray(x, np.int64))
