"""cocotb bus-functional models for ``amaranth.lib.stream`` ports.

Amaranth's Verilog backend flattens a stream port ``name`` to three signals:
``name__payload``, ``name__valid`` (transmitter -> receiver) and ``name__ready``
(receiver -> transmitter). A transfer happens on a rising edge of the clock where
``valid`` and ``ready`` are both high, and only then.

Both models sample the handshake in the ``ReadOnly`` phase of the cycle *before*
the edge (when every combinational path has settled and nobody may write any
more), and count a transfer there; the edge that follows then completes it. So
their counts are exact at every point in the next cycle, and a model stopped right
after a rising edge never loses or invents a word. Writes happen only after a
rising edge, never in ``ReadOnly``.

Randomness comes only from the ``random.Random`` the caller passes in, so a run is
reproducible from the caller's seed.

Usage (in a cocotb test, after a ``RisingEdge``)::

    drv = StreamDriver(dut, "i", dut.clk, random.Random(seed), stall_prob=0.3)
    mon = StreamMonitor(dut, "o", dut.clk, random.Random(seed + 1), stall_prob=0.3)
    mon.start()
    await drv.send(words)
    got = await mon.receive(len(words))
"""

from __future__ import annotations

import random
from typing import Iterable

import cocotb
from cocotb.task import Task
from cocotb.triggers import Event, ReadOnly, RisingEdge

__all__ = ["StreamDriver", "StreamMonitor", "stream_handles"]


def stream_handles(dut, name: str):
    """The ``(payload, valid, ready)`` handles of the flattened stream ``name``.

    Raises AttributeError naming the missing signal if ``dut`` has no such port."""
    handles = []
    for member in ("payload", "valid", "ready"):
        signal = f"{name}__{member}"
        try:
            handles.append(getattr(dut, signal))
        except AttributeError:
            raise AttributeError(f"{dut._name} has no port {signal!r} "
                                 f"(is {name!r} an amaranth.lib.stream port?)") from None
    return tuple(handles)


def _check_prob(stall_prob: float) -> float:
    stall_prob = float(stall_prob)
    if not 0.0 <= stall_prob < 1.0:
        raise ValueError(f"stall_prob must be in [0, 1), not {stall_prob}")
    return stall_prob


class StreamDriver:
    """Drives words into the stream input ``name`` of ``dut`` (we are the transmitter).

    dut, name
        The cocotb handle of the toplevel and the stream's port name.
    clk
        The clock handle the stream is synchronous to.
    rng
        Source of the random stalls (seeded by the caller); None = ``random.Random(0)``.
    stall_prob
        Probability, per cycle, of holding ``valid`` low before presenting the next
        word, in [0, 1). Once presented, a word stays valid until it is taken
        (as amaranth.lib.stream requires); ready is always honoured.
    garbage
        While ``valid`` is held low for a stall, drive random bits on ``payload``
        (from ``rng``), so a receiver that looks at the payload without ``valid``
        is caught. Default True.

    Attributes: ``sent`` (words transferred by the current/last :meth:`send`),
    ``total`` (words it was asked to send), ``width`` (payload bits).
    Construct it in a writable phase: it drives ``valid`` low.
    """

    def __init__(self, dut, name: str, clk, rng: random.Random | None = None,
                 stall_prob: float = 0.0, garbage: bool = True):
        self.name = name
        self.clk = clk
        self.payload, self.valid, self.ready = stream_handles(dut, name)
        self.width = len(self.payload)
        self.rng = rng if rng is not None else random.Random(0)
        self.stall_prob = _check_prob(stall_prob)
        self.garbage = bool(garbage)
        self.sent = 0
        self.total = 0
        self._task: Task | None = None
        self.valid.value = 0

    def _prepare(self, words: Iterable[int]) -> list[int]:
        words = [int(w) for w in words]
        for i, w in enumerate(words):
            if not 0 <= w < 1 << self.width:
                raise ValueError(f"{self.name}: word {i} ({w:#x}) does not fit the "
                                 f"{self.width}-bit payload")
        self.sent, self.total = 0, len(words)
        return words

    async def send(self, words: Iterable[int]) -> int:
        """Transfer ``words`` (unsigned ints) in order, then drop ``valid``.

        Call it in a writable phase (e.g. right after ``await RisingEdge(clk)``,
        not in ``ReadOnly``). Returns right after the last word's transfer edge,
        with the number of words sent. Raises ValueError if a word does not fit."""
        return await self._send(self._prepare(words))

    async def _send(self, words: list[int]) -> int:
        rng, prob, clk, width = self.rng, self.stall_prob, self.clk, self.width
        for word in words:
            while prob and rng.random() < prob:
                self.valid.value = 0
                if self.garbage:
                    self.payload.value = rng.getrandbits(width)
                await RisingEdge(clk)
            self.payload.value = word
            self.valid.value = 1
            while True:
                await ReadOnly()
                taken = self.ready.value == 1
                if taken:
                    self.sent += 1   # the coming edge completes the transfer
                await RisingEdge(clk)
                if taken:
                    break
        self.valid.value = 0
        return self.sent

    def start(self, words: Iterable[int]) -> Task:
        """Run :meth:`send` in the background; returns its task (see :meth:`stop`).
        Words are checked here, so a bad word raises ValueError at once."""
        if self._task is not None and not self._task.done():
            raise RuntimeError(f"{self.name}: a send is already running")
        self._task = cocotb.start_soon(self._send(self._prepare(words)))
        return self._task

    @property
    def done(self) -> bool:
        """Whether every word given to the last send has been transferred."""
        return self.sent == self.total

    def stop(self) -> None:
        """Abandon a background send and drop ``valid``. Call it right after a
        rising edge: words counted in :attr:`sent` are exactly the words taken."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
        self.valid.value = 0


class StreamMonitor:
    """Receives words from the stream output ``name`` of ``dut`` (we are the receiver):
    drives ``ready`` with random stalls and collects every transferred payload.

    rng, stall_prob
        ``ready`` is low on a cycle with probability ``stall_prob`` (in [0, 1)),
        drawn from ``rng`` (seeded by the caller; None = ``random.Random(0)``).

    Attributes: ``words`` (payloads received, in order, as unsigned ints),
    ``width`` (payload bits). Construct it in a writable phase: it drives
    ``ready`` low until :meth:`start`.
    """

    def __init__(self, dut, name: str, clk, rng: random.Random | None = None,
                 stall_prob: float = 0.0):
        self.name = name
        self.clk = clk
        self.payload, self.valid, self.ready = stream_handles(dut, name)
        self.width = len(self.payload)
        self.rng = rng if rng is not None else random.Random(0)
        self.stall_prob = _check_prob(stall_prob)
        self.words: list[int] = []
        self._task: Task | None = None
        self._grew = Event()
        self.ready.value = 0

    async def _run(self) -> None:
        rng, prob, clk = self.rng, self.stall_prob, self.clk
        while True:
            ready = not (prob and rng.random() < prob)
            self.ready.value = int(ready)
            await ReadOnly()
            if ready and self.valid.value == 1:
                # Counted now; the coming edge completes the transfer.
                self.words.append(self.payload.value.to_unsigned())
                self._grew.set()
            await RisingEdge(clk)

    def start(self) -> Task:
        """Start accepting words in the background (call in a writable phase)."""
        if self._task is not None and not self._task.done():
            raise RuntimeError(f"{self.name}: monitor already running")
        self._task = cocotb.start_soon(self._run())
        return self._task

    def stop(self) -> None:
        """Stop accepting and drop ``ready``. Call it right after a rising edge:
        :attr:`words` then holds exactly the words transferred."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
        self.ready.value = 0

    async def receive(self, n: int) -> list[int]:
        """Wait until at least ``n`` words have been received in total (the
        monitor must be running); returns the first ``n``. If it had to wait, it
        returns right after the rising edge that transferred the n-th word."""
        waited = False
        while len(self.words) < n:
            if self._task is None or self._task.done():
                raise RuntimeError(f"{self.name}: monitor is not running")
            self._grew.clear()
            await self._grew.wait()
            waited = True
        if waited:
            await RisingEdge(self.clk)
        return self.words[:n]
