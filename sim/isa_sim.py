"""Instruction-level simulator of an fxpgen core.

Executes an instruction stream against a data stream with the sequential
semantics of :mod:`fxpgen.isa` (``OPCODE_INFO``) and produces the result stream the
RTL must reproduce bit for bit. All rounding and saturation goes through
:mod:`fxpgen.numerics`.

Each instruction is executed in bulk with numpy: the addresses of all its
iterations are computed at once (in chunks of :data:`CHUNK` iterations), checked
for faults, checked for intra-instruction read-after-write hazards, and then the
iterations before the first fault are applied together. This equals running the
iterations one by one because

* reads are only allowed from rows the same instruction has not written earlier
  (otherwise :class:`ProgramError`), so every read sees the pre-instruction state
  (or the state after the previous chunk);
* repeated writes of the same row keep the last one, and repeated accumulation
  into one ACC row by a MATMUL is applied in occurrence order (saturation is not
  associative).

Addresses ``base + i1 * stride1 + i0 * stride0`` are exact integers: the loops
never wrap modulo 2**16, so a large stride faults with ``ADDRESS`` rather than
aliasing a low row. Decoded instructions and their per-iteration addresses,
faults and hazards are cached by instruction word (they depend on nothing else).

State kept by a :class:`Machine` (public for tests, all numpy arrays):

``spad``        ``(spad_depth, lanes)`` uint8 -- raw bytes; signedness is per instruction
``wbuf``        ``(wbuf_depth, cols)`` int8
``acc``         ``(acc_depth, cols)`` int64 -- signed values within ``acc_width`` bits
                (the simulator relies on this; keep it so when poking state)
``table_shift`` ``(table_depth, cols)`` int8 -- signed 6-bit requantization shift ``n_j``
``table_align`` ``(table_depth, cols)`` int8 -- signed 6-bit residual alignment ``a_j``
``banks``       ``(2, rows, cols)`` int8 -- the array's two weight banks
``lut``         ``(lut_depth,)`` uint8 -- the lookup tables, entry e of table t at 256 * t + e
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from fxpgen.config import REGIONS, CoreConfig
from fxpgen.isa import (INSN_BITS, UNREGIONED, ErrorCode, Instruction, Mem, Opcode, bad_fields, loadw_rows,
                        opcode_of, unpack_tiles, weight_bits)
from fxpgen.numerics import add_saturate, aligned_add, matmul_accumulate, maximum, requantize

__all__ = ["RunResult", "Machine", "ProgramError", "run_program", "CHUNK"]

#: Iterations of one instruction handled per numpy batch (bounds memory use for
#: instructions with up to 4095 x 4095 iterations).
CHUNK = 1 << 16

_NEVER = np.iinfo(np.int64).max


class ProgramError(Exception):
    """A program bug the hardware cannot detect (it would hang or read stale data):
    running out of data words during a LOAD, or an iteration reading a row that an
    earlier iteration of the same instruction wrote. The machine state is
    unspecified afterwards."""


@dataclass
class RunResult:
    """What one :meth:`Machine.run` produced.

    results    result-stream words (ints of ``cfg.bus_width`` bits), in order
    lasts      the ``last`` flag of each result word
    error      :class:`fxpgen.isa.ErrorCode` of the first error (``NONE`` if none)
    error_pc   index in the instruction list of the faulting instruction, else None
    halts      HALT instructions executed
    data_used  data-stream words consumed
    macs       vectors sent through the array (one per executed MATMUL iteration)
    """

    results: list[int] = field(default_factory=list)
    lasts: list[bool] = field(default_factory=list)
    error: ErrorCode = ErrorCode.NONE
    error_pc: int | None = None
    halts: int = 0
    data_used: int = 0
    macs: int = 0


@functools.lru_cache(maxsize=1 << 16)
def _decode(word: int) -> Instruction | None:
    """Decoded instruction, or None for an illegal opcode (decode is slow: cache)."""
    try:
        Opcode(opcode_of(word))
    except ValueError:
        return None
    return Instruction.decode(word)


@dataclass(frozen=True)
class _Stream:
    name: str
    mem: Mem
    base: int
    stride0: int
    stride1: int
    mask: int
    depth: int


class _Plan:
    """A decoded instruction bound to a configuration, with its iteration batches
    cached (addresses, faults and hazards depend only on the instruction word)."""

    __slots__ = ("insn", "streams", "bad_field", "hazard_reads", "batches")

    def __init__(self, insn, streams, bad_field, hazard_reads):
        self.insn = insn
        self.streams = streams          # used address streams, in check order x, y, z
        self.bad_field = bad_field
        self.hazard_reads = hazard_reads  # streams reading the memory z writes
        self.batches = None             # list[_Batch] once computed (small instructions)


class _Batch:
    """Up to CHUNK consecutive iterations of one instruction, cut at the first fault.

    t       global iteration indices that execute (all fault-free)
    ad      stream name -> row addresses of those iterations
    code    ErrorCode of the iteration right after them, or None
    hazard  description of an intra-instruction read-after-write, or None
    """

    __slots__ = ("t", "ad", "code", "hazard", "_keep", "_groups")

    def __init__(self, t, ad, code, hazard):
        # Batches are cached and shared between runs and machines: freeze them.
        for a in (t, *ad.values()):
            a.flags.writeable = False
        self.t, self.ad, self.code, self.hazard = t, ad, code, hazard
        self._keep = self._groups = None

    @property
    def keep(self) -> np.ndarray:
        """Indices of the last write of each distinct ``z`` row (later writes win;
        numpy does not promise an order for repeated fancy-index assignment)."""
        if self._keep is None:
            self._keep = _last_writes(self.ad["z"])
        return self._keep

    @property
    def groups(self):
        """``z`` rows grouped for order-preserving accumulation: None if all rows are
        distinct, else (order, starts, group, occurrence)."""
        if self._groups is None:
            z = self.ad["z"]
            order = np.argsort(z, kind="stable")
            zs = z[order]
            starts = np.flatnonzero(np.r_[True, zs[1:] != zs[:-1]])
            if len(starts) == len(z):
                self._groups = (None,)
            else:
                group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(zs)]))
                occ = np.empty(len(z), dtype=np.int64)
                occ[order] = np.arange(len(z)) - starts[group]
                self._groups = ((order, starts, group, occ),)
        return self._groups[0]


#: Instructions with at most this many iterations keep their batches cached.
_CACHE_ITERS = 4096

_PLANS: dict[tuple, dict[int, _Plan | None]] = {}   # (cfg, CHUNK) -> word -> plan
_PLANS_MAX = 1 << 17


def _sign_extend(v: np.ndarray, width: int) -> np.ndarray:
    v = v.astype(np.int64)
    return v - ((v >> (width - 1)) & 1) * (np.int64(1) << width)


def _make_plan(cfg: CoreConfig, word: int) -> _Plan | None:
    insn = _decode(word)
    if insn is None:
        return None
    streams = []
    for s in ("x", "y", "z"):
        mem = insn.stream_mem(s)
        if mem is None:
            continue
        a = getattr(insn, s)
        streams.append(_Stream(s, mem, a.base, a.stride0, a.stride1, a.regions, cfg.depth(mem)))
    p, op = insn.params, insn.opcode
    bad = bool(bad_fields(insn, cfg))
    # Only these streams read the memory `z` writes (SPAD), so only they can read
    # rows written earlier by the same instruction.
    if op in (Opcode.ADD, Opcode.MAX, Opcode.MUL):
        hazard_reads = ("x", "y")
    elif op is Opcode.LUT:
        hazard_reads = ("x",)
    elif op is Opcode.REQUANT and p["residual"]:
        hazard_reads = ("y",)
    else:
        hazard_reads = ()
    return _Plan(insn, tuple(streams), bad, hazard_reads)


def _batches(cfg: CoreConfig, plan: _Plan):
    """The iteration batches of an instruction, stopping after the one that faults."""
    if plan.batches is not None:
        return plan.batches
    n = plan.insn.iterations
    gen = _gen_batches(cfg, plan, n)
    if n > _CACHE_ITERS:
        return gen
    plan.batches = list(gen)
    return plan.batches


def _gen_batches(cfg: CoreConfig, plan: _Plan, n: int):
    """Compute batches of CHUNK iterations: addresses of every used stream, the first
    fault (streams checked in order x, y, z; ADDRESS before REGION within one), and
    intra-instruction hazards among the iterations that execute."""
    c0 = plan.insn.count0
    first_write = None
    for start in range(0, n, CHUNK):
        t = np.arange(start, min(n, start + CHUNK), dtype=np.int64)
        i1, i0 = np.divmod(t, c0)
        addrs = {}
        fault, code = len(t), None
        for s in plan.streams:
            a = s.base + i1 * s.stride1 + i0 * s.stride0
            addrs[s.name] = a
            oob = a >= s.depth
            if s.mem in UNREGIONED:
                bad = oob
            else:
                region = np.minimum(a * REGIONS // s.depth, REGIONS - 1)
                bad = oob | (((s.mask >> region) & 1) == 0)
            if fault and bad.any():
                k = int(np.argmax(bad))
                if k < fault:     # strict: an earlier stream wins a tie
                    fault = k
                    code = ErrorCode.ADDRESS if oob[k] else ErrorCode.REGION
        t = t[:fault]
        ad = {k: v[:fault] for k, v in addrs.items()}
        hazard = None
        if plan.hazard_reads and n > 1 and fault:
            first_write, hazard = _find_hazard(cfg, ad, plan.hazard_reads, t, first_write)
        yield _Batch(t, ad, code, hazard)
        if code is not None or hazard is not None:
            return


def _find_hazard(cfg, ad, reads, t, first_write):
    """First iteration reading (x/y) a SPAD row an earlier iteration wrote (z), as a
    message; ``first_write`` carries the first writing iteration of every row across
    batches."""
    if first_write is None:
        first_write = np.full(cfg.spad_depth, _NEVER, dtype=np.int64)
    rows, idx = np.unique(ad["z"], return_index=True)
    first_write[rows] = np.minimum(first_write[rows], t[idx])
    best = None
    for s in reads:
        w = first_write[ad[s]]
        hit = w < t
        if hit.any():
            j = int(np.argmax(hit))
            if best is None or t[j] < best[0]:
                best = (int(t[j]), int(ad[s][j]), s, int(w[j]))
    if best is None:
        return first_write, None
    return first_write, (
        "iteration {} reads SPAD row {} ({}) written by iteration {} of the same "
        "instruction; the pipelined hardware reads ahead, so split the instruction"
        .format(*best))


class Machine:
    """One core: memories, shift table and weight banks, persisting across
    :meth:`run` calls (the RTL keeps memory contents across programs). Memories
    start all zero. See the module docstring for the state arrays and dtypes."""

    def __init__(self, cfg: CoreConfig):
        self.cfg = cfg
        self.spad = np.zeros((cfg.spad_depth, cfg.lanes), dtype=np.uint8)
        self.wbuf = np.zeros((cfg.wbuf_depth, cfg.cols), dtype=np.int8)
        self.acc = np.zeros((cfg.acc_depth, cfg.cols), dtype=np.int64)
        self.table_shift = np.zeros((cfg.table_depth, cfg.cols), dtype=np.int8)
        self.table_align = np.zeros((cfg.table_depth, cfg.cols), dtype=np.int8)
        self.banks = np.zeros((2, cfg.rows, cfg.cols), dtype=np.int8)
        self.lut = np.zeros(cfg.lut_depth, dtype=np.uint8)
        self._bus_bytes = (cfg.bus_width + 7) // 8
        self._data: Sequence[int] = ()
        self._dpos = 0
        #: The packed weight-buffer rows the running LOADW has read (it may span batches).
        self._tile: np.ndarray | None = None

    def _plan(self, plans: dict, word: int) -> _Plan | None:
        try:
            return plans[word]
        except KeyError:
            pass
        if not isinstance(word, (int, np.integer)) or not 0 <= int(word) < (1 << INSN_BITS):
            raise ValueError(f"instruction word {word!r} is not a {INSN_BITS}-bit unsigned integer")
        if len(plans) >= _PLANS_MAX:
            plans.clear()
        plan = plans[word] = _make_plan(self.cfg, int(word))
        return plan

    # --- running --------------------------------------------------------------------

    def run(self, program: Sequence[int], data: Sequence[int]) -> RunResult:
        """Execute ``program`` (instruction words) consuming ``data`` (data-stream
        words). Stops at the first error (reported in the result, with everything
        produced before it); continues past HALT. Raises :class:`ProgramError` for
        programs the hardware cannot execute, ValueError for words that do not fit
        the instruction or bus width."""
        res = RunResult()
        self._data = data
        self._dpos = 0
        plans = _PLANS.setdefault((self.cfg, CHUNK), {})
        try:
            for pc, word in enumerate(program):
                plan = self._plan(plans, word)
                if plan is None:
                    res.error, res.error_pc = ErrorCode.ILLEGAL_OPCODE, pc
                    break
                if plan.bad_field:
                    res.error, res.error_pc = ErrorCode.BAD_FIELD, pc
                    break
                op = plan.insn.opcode
                if op is Opcode.HALT:
                    res.halts += 1
                    continue
                if op is Opcode.SYNC:
                    continue
                err = self._execute(pc, plan, res)
                if err is not None:
                    res.error, res.error_pc = err, pc
                    break
        finally:
            res.data_used = self._dpos
            self._data = ()
        return res

    def _execute(self, pc: int, plan: _Plan, res: RunResult) -> ErrorCode | None:
        n = plan.insn.iterations
        for b in _batches(self.cfg, plan):
            if b.hazard is not None:
                raise ProgramError(f"instruction {pc}: {b.hazard}")
            if len(b.t):
                self._apply(pc, plan.insn, b, n, res)
            if b.code is not None:
                return b.code
        return None

    # --- per-opcode bulk execution of one batch (all iterations fault-free) --------

    def _apply(self, pc, insn: Instruction, b: _Batch, n: int, res: RunResult):
        op, p, ad = insn.opcode, insn.params, b.ad
        cfg = self.cfg
        bits = cfg.acc_width
        if op is Opcode.LOAD:
            self._load(pc, Mem(p["mem"]), b)
        elif op is Opcode.STORE:
            words = self._pack(Mem(p["mem"]), ad["x"])
            res.results.extend(words)
            lasts = [False] * len(words)
            if int(b.t[-1]) == n - 1:
                lasts[-1] = True
            res.lasts.extend(lasts)
        elif op is Opcode.LOADW:
            # A tile row enters the array once its bits are read: before a fault,
            # the rows the reads so far complete.
            width = weight_bits(p.get("narrow", 0))
            if b.t[0] == 0:
                self._tile = np.zeros((loadw_rows(cfg, p.get("narrow", 0)), cfg.cols), np.int64)
            self._tile[b.t] = self.wbuf[ad["x"]]
            done = min(cfg.rows, 8 * (int(b.t[-1]) + 1) // width)
            self.banks[p["bank"], :done] = unpack_tiles(self._tile, width, cfg.rows)[:done]
        elif op is Opcode.MATMUL:
            lo = p["lane"] * cfg.rows
            raw = self.spad[ad["x"], lo:lo + cfg.rows]
            a = (raw.view(np.int8) if p["act_signed"] else raw).astype(np.int64)
            w = self.banks[p["bank"]].astype(np.int64)
            self._matmul(b, a, w, bool(p["accumulate"]))
            res.macs += len(b.t)
        elif op is Opcode.REQUANT:
            lo = p["lane"] * cfg.cols
            s = self.acc[ad["x"]]
            al = self.table_align[p["table"]].astype(np.int64)
            sh = self.table_shift[p["table"]].astype(np.int64)
            r = 0
            if p["residual"]:
                raw = self.spad[ad["y"], lo:lo + cfg.cols]
                r = (raw.view(np.int8) if p["res_signed"] else raw).astype(np.int64)
            s = aligned_add(s, np.maximum(-al, 0), r, np.maximum(al, 0), bits)
            out = requantize(s, sh, bool(p["out_signed"]), bool(p["relu"]))
            keep = b.keep
            self.spad[ad["z"][keep], lo:lo + cfg.cols] = (out[keep] & 0xFF).astype(np.uint8)
        elif op is Opcode.ADD:
            x = self._spad_read(ad["x"], p["a_signed"])
            y = self._spad_read(ad["y"], p["b_signed"])
            s = aligned_add(x, p["a_shift"], y, p["b_shift"], bits)
            out = requantize(s, p["shift"], bool(p["out_signed"]), bool(p["relu"]))
            self._spad_write(b, out)
        elif op is Opcode.MAX:
            x = self._spad_read(ad["x"], p["a_signed"])
            y = self._spad_read(ad["y"], p["a_signed"])
            self._spad_write(b, maximum(x, y))
        elif op is Opcode.MUL:
            x = self._spad_read(ad["x"], p["a_signed"])
            y = self._spad_read(ad["y"], p["b_signed"])
            self._spad_write(b, requantize(x * y, p["shift"], bool(p["out_signed"]), bool(p["relu"])))
        elif op is Opcode.LUT:
            self._spad_write(b, self.lut[256 * p["table"] + self.spad[ad["x"]].astype(np.int64)])
        else:  # pragma: no cover - HALT/SYNC never reach here
            raise AssertionError(op)

    def _spad_read(self, rows, signed) -> np.ndarray:
        raw = self.spad[rows]
        return (raw.view(np.int8) if signed else raw).astype(np.int64)

    def _spad_write(self, b: _Batch, values) -> None:
        keep = b.keep
        self.spad[b.ad["z"][keep]] = (values[keep] & 0xFF).astype(np.uint8)

    def _matmul(self, b: _Batch, a, w, accumulate: bool) -> None:
        z = b.ad["z"]
        if not accumulate:
            keep = b.keep
            # The product needs at most psum_width <= acc_width bits: no saturation.
            self.acc[z[keep]] = a[keep] @ w
            return
        bits = self.cfg.acc_width
        groups = b.groups
        if groups is None:
            self.acc[z] = matmul_accumulate(self.acc[z], a, w, bits)
            return
        order, starts, group, occ = groups
        prod = a @ w
        # One row accumulated several times: saturation is order-dependent, so
        # first try the common case where no partial sum leaves the range ...
        zs = z[order]
        csum = np.cumsum(prod[order], axis=0)
        base = np.where(starts[:, None] > 0, csum[np.maximum(starts - 1, 0)], 0)
        partial = csum - base[group] + self.acc[zs]
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        if partial.min() >= lo and partial.max() <= hi:
            ends = np.r_[starts[1:], len(zs)] - 1
            self.acc[zs[ends]] = partial[ends]
            return
        # ... else apply in waves: wave m holds the m-th write of every row, so
        # each row sees its additions in program order.
        for m in range(int(occ.max()) + 1):
            sel = occ == m
            rows = z[sel]
            self.acc[rows] = add_saturate(self.acc[rows], prod[sel], bits)

    # --- stream words ----------------------------------------------------------------

    def _load(self, pc, mem: Mem, b: _Batch) -> None:
        cfg = self.cfg
        z = b.ad["z"]
        cnt = len(z)
        if self._dpos + cnt > len(self._data):
            raise ProgramError(
                f"instruction {pc}: LOAD needs {cnt} data words at data index {self._dpos} "
                f"but only {len(self._data) - self._dpos} remain (the hardware would wait "
                "forever)")
        words = [int(w) for w in self._data[self._dpos:self._dpos + cnt]]
        if min(words) < 0 or max(words) >> cfg.bus_width:
            bad = next(w for w in words if w < 0 or w >> cfg.bus_width)
            raise ValueError(f"data word {bad:#x} is not a {cfg.bus_width}-bit unsigned integer")
        self._dpos += cnt
        nb = self._bus_bytes
        buf = np.frombuffer(b"".join(w.to_bytes(nb, "little") for w in words),
                            dtype=np.uint8).reshape(cnt, nb)
        keep = b.keep
        z, buf = z[keep], buf[keep]
        if mem is Mem.SPAD:
            self.spad[z] = buf[:, :cfg.lanes]
        elif mem is Mem.WBUF:
            self.wbuf[z] = buf[:, :cfg.cols].view(np.int8)
        elif mem is Mem.ACC:
            self.acc[z] = _sign_extend(_fields(buf, cfg.acc_width, cfg.cols), cfg.acc_width)
        elif mem is Mem.LUT:
            self.lut[z] = buf[:, 0]
        else:
            f = _fields(buf, 12, cfg.cols)
            self.table_shift[z] = _sign_extend(f & 0x3F, 6)
            self.table_align[z] = _sign_extend(f >> 6, 6)

    def _pack(self, mem: Mem, x: np.ndarray) -> list[int]:
        """Rows of SPAD or ACC as result words (same layout as ``isa.pack_row``)."""
        if mem is Mem.SPAD:
            rows = np.ascontiguousarray(self.spad[x])
        else:
            w = self.cfg.acc_width
            v = self.acc[x].view(np.uint64) & np.uint64((1 << w) - 1)   # two's complement
            b = ((v[..., None] >> np.arange(w, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
            rows = np.packbits(b.reshape(len(x), -1), axis=1, bitorder="little")
        return [int.from_bytes(r.tobytes(), "little") for r in rows]


def _fields(buf: np.ndarray, width: int, count: int) -> np.ndarray:
    """Unsigned ``width``-bit fields ``0..count-1`` of each little-endian byte row."""
    bits = np.unpackbits(buf, axis=1, bitorder="little")[:, :width * count]
    bits = bits.reshape(len(buf), count, width).astype(np.int64)
    return bits @ (np.int64(1) << np.arange(width, dtype=np.int64))


def _last_writes(rows: np.ndarray) -> np.ndarray:
    """Indices of the last occurrence of every distinct row (later writes win)."""
    if len(rows) <= 1:
        return np.arange(len(rows))
    _, idx = np.unique(rows[::-1], return_index=True)
    return len(rows) - 1 - idx


def run_program(cfg: CoreConfig, program: Sequence[int], data: Sequence[int]) -> RunResult:
    """Run ``program`` on a fresh :class:`Machine` (all memories zero)."""
    return Machine(cfg).run(program, data)
