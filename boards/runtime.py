"""Running programs on a board through :class:`fxpgen.boards.host.BoardLink`: a
random GEMM checked bit for bit (``fxpgen check --port``) and compiled networks
(``fxpgen run --engine board``)."""

from __future__ import annotations

import numpy as np

from fxpgen.isa import ErrorCode
from fxpgen.sim.segments import resolve_data

from .host import BoardLink, ResultLost, open_serial
from .protocol import ProtocolError

__all__ = ["connect", "board_check", "run_images", "MAX_RERUNS"]

DEFAULT_BAUD = 1_000_000

#: Runs of one program (a GEMM, or one input through every layer) from a reset
#: after a result word was lost on the wire, before giving up.
MAX_RERUNS = 4


def _with_reruns(link: BoardLink, run, what: str):
    """``run()``, again from a reset each time a result word is lost on its way (the
    board cannot resend results, but every program is whole from a reset)."""
    for attempt in range(MAX_RERUNS + 1):
        try:
            return run()
        except ResultLost as e:
            link.rejected.append(f"{e}; {what} run again from a reset")
            if attempt == MAX_RERUNS:
                raise ProtocolError(f"{what}: results lost {MAX_RERUNS + 1} times, the last: {e}") from None
            link.reset()


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
    run = _with_reruns(link, lambda: link.execute(program.words, program.data,
                                                  n_results=program.n_results), "the GEMM")
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
        "frames_rejected": run.rejected, "frames_sent": link.frames_sent,
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
    for i, x in enumerate(inputs):
        out, per_layer = _with_reruns(link, lambda: _run_image(link, program, x, baked), f"input {i}")
        outs.append(out)
        layers.append(per_layer)
        if progress:
            progress(1)
    return outs, layers


def _run_image(link: BoardLink, program, x, baked: bool) -> tuple[np.ndarray, list[dict]]:
    """One input through every layer: the output and the counters per layer (none
    with ``baked``: the board's ROM program runs every layer without a pause)."""
    segs = program.segments(x)
    if baked:
        run = link.run_baked(_image_words(program, x), n_results=sum(s.n_results for s in segs),
                             n_halts=len(segs))
        return program.decode(run.results), []
    res, per_layer = [], []
    for seg in segs:
        run = link.execute(seg.words, resolve_data(seg, res), n_results=seg.n_results)
        res += run.results
        per_layer.append({"layer": seg.layer, **run.status["counters"]})
    return program.decode(res), per_layer


def _image_words(program, x) -> list[int]:
    """The input's own words (a baked program holds the constants in ROM)."""
    return program.view.image_words(np.asarray(x, np.int64))
