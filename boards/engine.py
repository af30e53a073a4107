"""The ``board`` engine: runnable programs on a board over its UART link
(:func:`fxpgen.boards.runtime.run_images`), the counters read at each HALT."""

from __future__ import annotations

import time
from typing import Sequence

from fxpgen.sim.engine import Engine, EngineResult, Progress, Runnable

from .host import BoardLink
from .runtime import DEFAULT_BAUD, connect, run_images

__all__ = ["BoardEngine"]


class BoardEngine(Engine):
    """A board on serial ``port`` at ``baud``, replies awaited ``timeout`` seconds.
    With ``baked`` the board runs the program baked into its bitstream (only the
    inputs are sent; no per-layer counters). The host keeps a program's off-chip maps:
    each segment's data words that reference earlier results are filled before it is
    sent (not with ``baked``). The link opens on the first run;
    ``info["frames_rejected"]`` lists the frames the board rejected and got again (and
    the inputs run again after a result was lost), ``info["frames_sent"]`` counts the
    frames written, resends included."""

    name = "board"
    checked_against_golden = True

    def __init__(self, *, port: str, baud: int = DEFAULT_BAUD, timeout: float = 2.0,
                 baked: bool = False):
        self.port, self.baud, self.timeout, self.baked = port, baud, timeout, baked
        self._link: BoardLink | None = None

    @classmethod
    def from_options(cls, *, port: str | None = None, baud: int | None = None,
                     timeout: float | None = None, baked: bool | None = None, **_) -> "BoardEngine":
        if not port:
            raise ValueError("the board engine needs a serial port (--port)")
        given = {"baud": baud, "timeout": timeout, "baked": baked}
        return cls(port=port, **{k: v for k, v in given.items() if v is not None})

    @property
    def link(self) -> BoardLink:
        """The open link to the board."""
        if self._link is None:
            self._link = connect(self.port, self.baud, self.timeout)
        return self._link

    def run(self, program: Runnable, inputs: Sequence, *, progress: Progress | None = None) -> EngineResult:
        if self.baked and program.result_refs():
            raise RuntimeError("a baked program runs without pausing between layers, so the host "
                               "cannot keep its off-chip maps: send the program (without --baked)")
        t0 = time.monotonic()
        link = self.link
        outputs, layers = run_images(link, program, list(inputs), baked=self.baked, progress=progress)
        return EngineResult(outputs, None if self.baked else layers,
                            {"seconds": time.monotonic() - t0, "frames_rejected": list(link.rejected),
                             "frames_sent": link.frames_sent})
