"""Lowering of a quantized graph to a program for one core configuration: the driver.

The steps: plan the maps' borders (:func:`~fxpgen.compiler.layout.plan_borders`) and
lifetimes; place the input image (resident, LOADed first) or, when it is streamed,
a band buffer for its consumer; then, op by op, place the output map, lower the op
(:data:`_LOWERINGS`: convolutions and average pools through
:mod:`~fxpgen.compiler.conv_plan` and :mod:`~fxpgen.compiler.conv_emit`, max pools and
adds on the vector unit, :mod:`~fxpgen.compiler.vector_ops`, concats and slices as
copies of channel groups there or, where a channel would change lane, as the 1x1
convolutions of :mod:`~fxpgen.compiler.channel_ops`, channel shuffles folded into the
convs reading them by :mod:`~fxpgen.compiler.shuffle_fold` or else 1x1 convolutions too,
nearest-neighbour upsampling on the vector unit), end the layer with a HALT and
free the maps it read last; finally STORE the output map (unless it is off chip:
its producer stored it).

Every layer ends with a HALT, so the core's performance counters (cleared when a
program starts, frozen by HALT) measure each layer on its own.

Streamed input. When the input image does not fit next to the maps the network
needs (a 224x224 image, say) and its only consumer is a convolution or average pool,
the image is not kept: the consumer's input is a band buffer holding the input rows
of one output chunk, ``(rows_per_chunk - 1) * stride + kh`` rows (fewer output
rows per chunk when the band would not fit next to the output), and each chunk
LOADs its rows from the data stream before its matmuls. :meth:`Lowered.data` puts
the image's pieces and the constant words together. ``lower(..., stream_input=None)``
streams only when the resident image does not fit.

Memory. Scratchpad maps are allocated first-fit and freed after their last use
(:mod:`~fxpgen.compiler.layout`).

Off-chip maps. When the network does not fit that way either, maps go to the
host's memory (:mod:`~fxpgen.compiler.offchip`: which ones, and the band lowering
of the layers that read or write them): their producer STOREs them to the result
stream, their consumers LOAD bands of their rows back from the data stream, as
references to those results (:meth:`Lowered.result_refs`); an off-chip output's
producer STOREs its rows as the program's output words. A network that fits
with every map resident lowers as if this did not exist. What does not fit even
so raises :class:`~fxpgen.compiler.tiling.DoesNotFit` saying what and by how much.

Batches. ``lower(..., batch=N)`` compiles the network for N images at once: every
map has N copies in the scratchpad (one :class:`MapLayout` per image, allocated one
after another), the data stream carries the N images one after another and the result
stream their N output maps. A convolution's chunk holds an accumulator block per
image, so that each weight tile, once LOADWed, serves the N images back to back
(:mod:`~fxpgen.compiler.conv_emit`); the vector ops run image after image. Every
map stays resident: a batch does not stream its input nor keep maps off chip.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fxpgen.config import CoreConfig
from fxpgen.isa import COUNT_MAX, Addr, Instruction, Mem, Opcode, pack_rows, unpack_rows

from .conv_emit import ConvBands, ImageMaps, emit_conv, image_blocks
from .conv_plan import ConvPlan, conv_constants, plan_conv, rows_per_chunk
from .emit import Emitter, HostBuffer, HostPiece, InputPiece
from .layout import MapLayout, SpadAllocator, last_uses, pad_byte, plan_borders
from .channel_ops import expand_unaligned
from .qgraph import QAdd, QAvgPool, QConcat, QConv, QGraph, QLut, QMaxPool, QMul, QResize, QSlice
from .offchip import lower_banded, recall_order, spill_plans, spillable, touches_offchip
from .shuffle_fold import fold_shuffles
from .tiling import DoesNotFit, ceil_div
from .unfold import InputUnfold, sole_consumer, unfold_choices
from .vector_ops import (emit_add, emit_concat, emit_lut_groups, emit_maxpool, emit_mul, emit_resize,
                         emit_slice, load_lut_table, lut_slot)

__all__ = ["lower", "Lowered"]

#: ``progress(done, total)``: layers of the program emitted so far, of all.
Progress = Callable[[int, int], None]


@dataclass
class Lowered:
    """A program: instructions with the layer each serves, the data stream (constant
    words, where the input image's words go in and where words of off-chip maps do),
    the result stream (the off-chip maps' runs; the rest is the output map), and the
    layouts of the input and output maps."""

    cfg: CoreConfig
    words: list[int]                         # the instruction words
    layers: list[str]                        # source layer of every instruction
    consts: list[int]                        # the data stream without the image
    input_pieces: list[InputPiece]           # where the image goes in, in stream order
    input_layout: MapLayout
    output_layout: MapLayout
    input_signed: bool
    output_signed: bool
    spad_rows_used: int = 0
    notes: list[str] = field(default_factory=list)
    input_unfold: InputUnfold | None = None  # how the host lays out the image, if it does
    host_pieces: list[HostPiece] = field(default_factory=list)  # off-chip words, in stream order
    host_buffers: list[HostBuffer] = field(default_factory=list)  # off-chip maps in the results
    batch: int = 1                           # images per run: the input and output maps each

    @functools.cached_property
    def instructions(self) -> list[Instruction]:
        """The instructions, decoded from :attr:`words` (region masks filled in), one
        object per distinct word."""
        decoded: dict[int, Instruction] = {}
        return [decoded.get(w) or decoded.setdefault(w, Instruction.decode(w)) for w in self.words]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The (C, H, W) image the program takes (:attr:`batch` of them per run)."""
        if self.input_unfold is not None:
            return self.input_unfold.shape
        lay = self.input_layout
        return (lay.channels, lay.height, lay.width)

    def data(self, image_words: list[int]) -> list[int]:
        """The whole data stream for one run's images (:meth:`image_words`); the words of
        off-chip maps are zeros there, to be filled from the results
        (:meth:`result_refs`)."""
        out, pos = [], 0
        for p in self._stream_pieces():
            out += self.consts[pos:p.at]
            if isinstance(p, InputPiece):
                out += image_words[p.first:p.first + p.count]
            else:
                out += [0] * p.count
            pos = p.at
        return out + self.consts[pos:]

    def _stream_pieces(self) -> list[InputPiece | HostPiece]:
        """Image and host pieces in stream order."""
        if not self.host_pieces:
            return list(self.input_pieces)
        # Image piece k follows the host pieces emitted while k image pieces existed.
        keyed = [((p.at, k, 1), p) for k, p in enumerate(self.input_pieces)]
        keyed += [((p.at, p.after_inputs, 0), p) for p in self.host_pieces]
        return [p for _, p in sorted(keyed, key=lambda kp: kp[0])]

    def result_refs(self) -> list[tuple[int, int, int, int, int]]:
        """Where the data stream takes result words: ``(data word, result word, count,
        run, stride)``, in stream order: data word ``data word + k`` is result word
        ``result word + (k // run) * stride + k % run`` of the same run of the program."""
        refs, pos, const = [], 0, 0
        for p in self._stream_pieces():
            pos += p.at - const
            const = p.at
            if isinstance(p, HostPiece):
                refs.append((pos, self.host_buffers[p.buffer].result_at + p.offset, p.count,
                             p.run, p.stride))
            pos += p.count
        return refs

    def output_words(self, results: list[int]) -> list[int]:
        """The output map's words among all result words (those of no host buffer: an
        off-chip output's rows, stored by its producer, belong to none)."""
        out, pos = [], 0
        for b in self.host_buffers:
            out += results[pos:b.result_at]
            pos = b.result_at + b.count
        return out + results[pos:]

    @property
    def input_streamed(self) -> bool:
        """Whether the image goes in as more than one piece (:class:`InputPiece`)."""
        return len(self.input_pieces) != 1

    def split_data(self) -> tuple[list[int], list[int]]:
        """(constant words before the image, after it) of a program whose image is one
        piece; a program that streams its input in bands, or keeps maps off chip, has
        no such split."""
        if self.input_streamed:
            raise ValueError(f"the program streams its input in {len(self.input_pieces)} pieces; "
                             "only a program whose input is one piece has a before/after split")
        if self.host_pieces:
            raise ValueError("the program keeps maps off chip; its data stream takes words of "
                             "its own results and has no before/after split")
        at = self.input_pieces[0].at
        return self.consts[:at], self.consts[at:]

    def image_words(self, x_q: np.ndarray) -> list[int]:
        """Data words of an input map (C, H, W) int: the interior pixels, row-major
        (after unfolding, :mod:`fxpgen.compiler.unfold`, when the program asks for it);
        for a batched program, of its :attr:`batch` maps (N, C, H, W), one after another."""
        if self.batch > 1:
            if x_q.shape != (self.batch, *self.input_shape):
                raise ValueError(f"input is {x_q.shape}, the program expects a batch of "
                                 f"{(self.batch, *self.input_shape)}")
            return [w for x in x_q for w in self._one_image_words(x)]
        return self._one_image_words(x_q)

    def _one_image_words(self, x_q: np.ndarray) -> list[int]:
        lay = self.input_layout
        if x_q.shape != self.input_shape:
            raise ValueError(f"input is {x_q.shape}, the program expects {self.input_shape}")
        if self.input_unfold is not None:
            x_q = self.input_unfold.apply(x_q)
        c, h, w = x_q.shape
        L = self.cfg.lanes
        px = np.zeros((h, w, lay.groups * L), np.int64)
        px[:, :, :c] = np.transpose(x_q, (1, 2, 0))
        return pack_rows(Mem.SPAD, px.reshape(-1, L), self.cfg)

    def decode_output(self, words: list[int]) -> np.ndarray:
        """The output map (C, H, W) from the result words (interior pixels; those of
        off-chip maps left out); for a batched program its :attr:`batch` maps
        (N, C, H, W)."""
        lay = self.output_layout
        L = self.cfg.lanes
        if self.host_buffers:
            words = self.output_words(words)
        rows = unpack_rows(Mem.SPAD, words, self.cfg, signed=self.output_signed)
        px = rows.reshape(self.batch, lay.height, lay.width, lay.groups * L)[..., :lay.channels]
        maps = np.transpose(px, (0, 3, 1, 2))
        return maps if self.batch > 1 else maps[0]


def lower(qg: QGraph, cfg: CoreConfig, *, stream_input: bool | None = None,
          unfold: bool = True, progress: Progress | None = None, batch: int = 1) -> Lowered:
    """Lower ``qg`` to a program for ``cfg``; raise :class:`DoesNotFit` when a layer or
    map does not fit the memories.

    ``stream_input``: keep the input image in the scratchpad (False), stream it in
    bands of rows to its consumer (True), or stream only when it does not fit (None).
    ``unfold``: let the host unfold the input for its first convolution, by kernel row
    or in full, when that costs fewer cycles and fits (:mod:`fxpgen.compiler.unfold`).
    ``progress(done, total)``: called as the program's layers are emitted.
    ``batch``: images per run (>= 1); above 1 every map stays in the scratchpad (a
    :class:`DoesNotFit` otherwise), so ``stream_input`` must not be True.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")
    if batch > 1 and stream_input:
        raise DoesNotFit(f"a batch of {batch} images keeps its inputs in the scratchpad; it cannot "
                         "stream them")
    _check_units(qg, cfg)
    qg = expand_unaligned(fold_shuffles(qg), cfg.lanes)
    misfits: list[DoesNotFit] = []
    for graph, how in unfold_choices(qg, cfg) if unfold else [(qg, None)]:
        try:
            low = _lower_streamed(graph, cfg, stream_input, progress, batch)
        except DoesNotFit as e:
            misfits.append(e)
            continue
        low.input_unfold = how
        return low
    raise misfits[0]


def _lower_streamed(qg: QGraph, cfg: CoreConfig, stream_input: bool | None,
                    progress: Progress | None = None, batch: int = 1) -> Lowered:
    if batch > 1:
        return _lower(qg, cfg, None, plans={}, progress=progress, batch=batch)
    consumer = _streamable_consumer(qg)
    if stream_input and consumer is None:
        raise DoesNotFit(f"the input {qg.input} can be streamed only when its one consumer is a "
                         "convolution or average pool")
    plans: dict = {}
    try:
        return _lower_resident(qg, cfg, stream_input, consumer, plans, progress)
    except DoesNotFit as resident:
        if not spillable(qg, output=True):
            raise
        return _lower_offchip(qg, cfg, consumer if stream_input is not False else None, resident, plans,
                              progress)


def _lower_resident(qg: QGraph, cfg: CoreConfig, stream_input: bool | None, consumer,
                    plans: dict, progress: Progress | None = None) -> Lowered:
    """The lowering with every map but a streamed input in the scratchpad."""
    if stream_input is None:
        try:
            return _lower(qg, cfg, None, plans=plans, progress=progress)
        except DoesNotFit as resident:
            if consumer is None:
                raise
            try:
                return _lower(qg, cfg, consumer, plans=plans, progress=progress)
            except DoesNotFit as streamed:
                raise DoesNotFit(f"{streamed} (with the input streamed in bands; kept whole: "
                                 f"{resident})") from None
    return _lower(qg, cfg, consumer if stream_input else None, plans=plans, progress=progress)


def _lower_offchip(qg: QGraph, cfg: CoreConfig, consumer, resident: DoesNotFit, plans: dict,
                   progress: Progress | None = None) -> Lowered:
    """The lowering with maps off chip, for smaller and smaller spill budgets
    (:mod:`~fxpgen.compiler.offchip`); ``resident`` is why the maps do not all fit.
    Convs in windows of columns and pools in bands of kernel rows only when no plan
    lowers without them: a network that lowered before they existed keeps its program."""
    tried, last = set(), resident
    for narrow in (False, True):
        for spilled in spill_plans(qg, cfg.lanes, cfg.spad_depth, consumer is not None):
            tried.add(spilled)
            try:
                _dry_chunks(qg, cfg, consumer, spilled, plans, narrow)
            except DoesNotFit as e:
                last = e
                continue
            spilled = _recall(qg, cfg, consumer, spilled, plans, narrow)
            return _run(_Lowering(qg, cfg, spilled, plans, narrow=narrow), consumer, progress)
    if not tried:
        raise resident
    raise DoesNotFit(f"{last} (with {len(max(tried, key=len))} maps off chip; kept in the "
                     f"scratchpad: {resident})") from None


def _recall(qg: QGraph, cfg: CoreConfig, consumer, spilled: frozenset[str], plans: dict,
            narrow: bool) -> frozenset[str]:
    """``spilled``, a plan that lowers, less every map that lowers back on chip
    without shrinking any banded layer's chunks: the spill budget of
    :func:`~fxpgen.compiler.offchip.spill_plan` is one for the whole network, so it
    spills maps that fit where they live, but a map brought back takes rows that
    another layer's bands may need (fewer rows a chunk: more weight loads, a slower
    layer). Tried one at a time in :func:`~fxpgen.compiler.offchip.recall_order`,
    each by a dry run."""
    chunks = _dry_chunks(qg, cfg, consumer, spilled, plans, narrow)
    for name in recall_order(qg, cfg.lanes, spilled):
        fewer = spilled - {name}
        if not fewer:
            break
        try:
            now = _dry_chunks(qg, cfg, consumer, fewer, plans, narrow)
        except DoesNotFit:
            continue
        if all(now.get(op, COUNT_MAX) >= rows for op, rows in chunks.items()):
            spilled, chunks = fewer, now
    return spilled


def _dry_chunks(qg: QGraph, cfg: CoreConfig, consumer, spilled: frozenset[str], plans: dict,
                narrow: bool) -> dict[str, int]:
    """The output rows a chunk of each banded layer (:attr:`_Lowering.chunks`) of a dry
    run with ``spilled`` off chip; raise :class:`DoesNotFit` when it does not lower."""
    lo = _Lowering(qg, cfg, spilled, plans, dry=True, narrow=narrow)
    _run(lo, consumer)
    return lo.chunks


def _streamable_consumer(qg: QGraph):
    """The input's only consumer when it is a conv or average pool reading it once."""
    op = sole_consumer(qg)
    return op if isinstance(op, (QConv, QAvgPool)) else None


def _lower(qg: QGraph, cfg: CoreConfig, streamed_into, offchip: frozenset[str] = frozenset(),
           plans: dict | None = None, progress: Progress | None = None, batch: int = 1,
           narrow: bool = False) -> Lowered:
    """The lowering; ``streamed_into`` is the input's consumer when the input is
    streamed, ``offchip`` the maps kept in the host's memory, ``plans`` the convs'
    constants (:class:`~fxpgen.compiler.conv_plan.ConvConstants`) by op, shared by
    the attempts, ``batch`` the images per run, ``narrow`` whether a banded layer
    whose one output row does not fit may run in windows of columns or, a global
    pool, in bands of kernel rows. A dry run (the placements and plans,
    no instruction) goes first: an attempt that does not fit fails in it, emitting
    nothing; ``progress`` follows the second run."""
    plans = {} if plans is None else plans
    _run(_Lowering(qg, cfg, offchip, plans, dry=True, batch=batch, narrow=narrow), streamed_into)
    return _run(_Lowering(qg, cfg, offchip, plans, batch=batch, narrow=narrow), streamed_into, progress)


def _run(lo: "_Lowering", streamed_into, progress: Progress | None = None) -> Lowered | None:
    """Lower ``lo``'s graph op by op (``progress(done, total)`` after each); the
    program, or None for a dry run."""
    qg = lo.qg
    in_lay = lo.place_input(streamed_into)
    last_use = last_uses(qg)
    for i, op in enumerate(qg.ops):
        if progress:
            progress(i, len(qg.ops))
        lo.em.layer = op.name
        if touches_offchip(lo, op):
            band_in = lower_banded(lo, op, op is streamed_into)
            in_lay = band_in or in_lay
            lo.em.emit(Instruction(Opcode.HALT))
            lo.release_read_last(op, i, last_use)
            continue
        out_lay = lo.place(op.output, apart=tuple(op.inputs))
        if op is streamed_into:
            in_lay = _lower_band_consumer(lo, op, out_lay)
        elif isinstance(op, (QConv, QAvgPool)):
            _lower_conv(lo, op, out_lay)
        else:
            lowering = _LOWERINGS.get(type(op))
            if lowering is None:
                raise TypeError(f"{op.name}: cannot lower {type(op).__name__}")
            if not lo.dry:
                for image in range(lo.batch):
                    lowering(lo, op, image)
        # A HALT per layer: the core's counters then measure each layer on its own.
        lo.em.emit(Instruction(Opcode.HALT))
        lo.release_read_last(op, i, last_use)
    if progress:
        progress(len(qg.ops), len(qg.ops))
    return lo.finish(in_lay)


class _Lowering:
    """What the lowering of one graph keeps: the emitter, the scratchpad allocator,
    the borders and the layout of every map placed so far (of the first image in
    ``layouts``, of each of the ``batch`` images in ``maps``); ``dry``: placements and
    plans only, no instruction emitted; ``narrow``: see :func:`_lower`."""

    def __init__(self, qg: QGraph, cfg: CoreConfig, offchip: frozenset[str] = frozenset(),
                 plans: dict | None = None, dry: bool = False, batch: int = 1, narrow: bool = False):
        self.qg, self.cfg = qg, cfg
        self.offchip = offchip
        self.narrow = narrow
        self.dry = dry
        self.batch = batch
        self.plans = {} if plans is None else plans
        self.host: dict[str, int] = {}       # off-chip map -> its host buffer
        # Output rows a chunk of each banded layer (0: in windows of columns or bands
        # of kernel rows), which the spill-plan search compares between plans.
        self.chunks: dict[str, int] = {}
        self.em = Emitter(cfg)
        self.border, self.pad_signed = plan_borders(qg)
        self.alloc = SpadAllocator(cfg.spad_depth)
        self.layouts: dict[str, MapLayout] = {}
        self.maps: dict[str, list[MapLayout]] = {}

    def place(self, name: str, height: int | None = None, apart: tuple[str, ...] = ()) -> MapLayout:
        """Allocate map ``name`` (a copy per image of the batch) and fill its border;
        with ``height``, a band buffer of that many rows (no top or bottom border) at
        the top of the scratchpad. Each image's copy goes apart from (in no region of)
        the copy before it and the same and the next image's maps ``apart`` when it
        can (else apart from the copy before it): the units then never wait for one
        another over a region or a bank's read port, and an op reading two of them
        reads both in one cycle. The first image's layout."""
        t = self.qg.tensor(name)
        c, h, w = t.shape
        groups = ceil_div(c, self.cfg.lanes)
        b = self.border[name]
        if height is None:
            lay = MapLayout(0, c, h, w, tuple(b), groups)
            what, top = f"feature map {name} {t.shape}", False
        else:
            lay = MapLayout(0, c, height, w, (0, b[1], 0, b[3]), groups)
            what, top = f"the band of {height} rows of input {name} {t.shape}", True
        maps = []
        for i in range(self.batch):
            image = f" (image {i + 1} of a batch of {self.batch})" if self.batch > 1 else ""
            before = [(m.base, m.rows) for m in maps[-1:]]
            # The next image's inputs too: its MATMULs run beside this image's REQUANTs.
            avoid = before + [(self.maps[t][j].base, self.maps[t][j].rows) for t in apart if t in self.maps
                              for j in range(i, min(i + 2, self.batch))]
            base = (self.alloc.alloc_apart(lay.rows, what + image, avoid, top, fallback=before) if avoid
                    else self.alloc.alloc(lay.rows, what + image, top))
            maps.append(dataclasses.replace(lay, base=base))
        self.layouts[name], self.maps[name] = maps[0], maps
        for m in maps:
            if any(m.border):
                self.em.fill(m, pad_byte(self.pad_signed.get(name, False)))
        return maps[0]

    def image_maps(self, op: QConv | QAvgPool, plan: ConvPlan) -> tuple[ImageMaps, ...]:
        """The maps of images 1 .. batch - 1 of a conv's input, output and residual."""
        res = self.maps[plan.residual] if plan.residual else [None] * self.batch
        return tuple(ImageMaps(*m) for m in zip(self.maps[op.input], self.maps[op.output], res))[1:]

    def place_input(self, streamed_into) -> MapLayout | None:
        """The resident input map, LOADed first (the first data the program consumes);
        None when the image is streamed in bands to ``streamed_into``."""
        qg = self.qg
        self.em.layer = "input"
        c, _, w = qg.tensor(qg.input).shape
        words = w * ceil_div(c, self.cfg.lanes)
        if words > COUNT_MAX:
            raise DoesNotFit(f"input rows of {words} words exceed a loop count")
        if streamed_into is not None:
            return None
        in_lay = self.place(qg.input)
        image = in_lay.height * in_lay.width * in_lay.groups
        for i, lay in enumerate(self.maps[qg.input]):
            self.em.load_image_rows(lay, 0, 0, lay.height, i * image)
        return in_lay

    def plan_conv(self, op: QConv | QAvgPool, band_rows_per_chunk: int | None = None,
                  chunk_rows: int | None = None) -> ConvPlan:
        """:func:`~fxpgen.compiler.conv_plan.plan_conv` of ``op``, its constants computed once."""
        # By identity: the ops outlive the attempts, which share ``plans``.
        if id(op) not in self.plans:
            self.plans[id(op)] = conv_constants(self.qg, op, self.cfg)
        return plan_conv(self.qg, op, self.cfg, band_rows_per_chunk, chunk_rows, self.plans[id(op)])

    def emit_conv(self, plan: ConvPlan, in_lay: MapLayout, out_lay: MapLayout, res_lay: MapLayout | None,
                  bands: ConvBands | None = None, more: tuple[ImageMaps, ...] = ()) -> None:
        """:func:`~fxpgen.compiler.conv_emit.emit_conv`, unless this is a dry run."""
        if not self.dry:
            emit_conv(self.em, plan, in_lay, out_lay, res_lay, bands, more)

    def release_read_last(self, op, i: int, last_use: dict[str, int]) -> None:
        """Free the maps op ``i`` was the last to read (never the graph output; an
        off-chip map, or an input streamed to a banded layer, holds no rows here)."""
        for t in set(op.inputs):
            if last_use.get(t) == i and t != self.qg.output and t in self.layouts:
                for lay in self.maps[t]:
                    self.alloc.release(lay.base, lay.rows)

    def finish(self, in_lay: MapLayout) -> Lowered | None:
        """STORE the output map row by row, HALT, and the program (None for a dry run).
        An off-chip output was stored by its producer (no "output" layer then): its
        layout says only its shape, for decoding."""
        qg, em = self.qg, self.em
        if self.dry:
            return None
        if qg.output in self.offchip:
            c, h, w = qg.tensor(qg.output).shape
            out_lay = MapLayout(0, c, h, w, (0, 0, 0, 0), ceil_div(c, self.cfg.lanes))
        else:
            out_lay = self.layouts[qg.output]
            em.layer = "output"
            for lay in self.maps[qg.output]:
                for y in range(lay.height):
                    em.emit(Instruction(Opcode.STORE, {"mem": Mem.SPAD.value}, lay.width * lay.groups, 1,
                                        x=Addr(lay.pixel(y, 0), 1)))
            em.emit(Instruction(Opcode.HALT))
        return Lowered(self.cfg, em.words, em.layers, em.data, em.pieces, in_lay, out_lay,
                       qg.tensor(qg.input).fmt.signed, qg.tensor(qg.output).fmt.signed,
                       spad_rows_used=self.alloc.high, notes=em.notes, host_pieces=em.host_pieces,
                       host_buffers=em.buffers, batch=self.batch)


def _lower_band_consumer(lo: _Lowering, op, out_lay: MapLayout) -> MapLayout:
    """Lower the streamed input's consumer over a band buffer; the input's layout as
    the host sees it (the whole image's height and border)."""
    qg, cfg = lo.qg, lo.cfg
    c, h, w = qg.tensor(qg.input).shape
    kh = op.weight.shape[2] if isinstance(op, QConv) else op.kernel[0]
    sy = op.stride[0]
    b = lo.border[qg.input]
    # The band buffer takes what the output left; a smaller band means fewer
    # output rows per chunk.
    band_row = (w + b[1] + b[3]) * ceil_div(c, cfg.lanes)
    fit = (lo.alloc.largest() // band_row - kh) // sy + 1
    rows = min(rows_per_chunk(cfg, out_lay.height, out_lay.width), fit)
    if rows < 1:
        raise DoesNotFit(f"{op.name}: the band of {kh} input rows its kernel needs takes "
                         f"{kh * band_row} scratchpad rows, {lo.alloc.largest()} are free")
    lo.chunks[op.name] = rows
    band = lo.place(qg.input, (rows - 1) * sy + kh)
    _lower_conv(lo, op, out_lay, band_rows_per_chunk=rows)
    return dataclasses.replace(band, height=h, border=tuple(b))


def _lower_conv(lo: _Lowering, op: QConv | QAvgPool, out_lay: MapLayout,
                band_rows_per_chunk: int | None = None) -> None:
    """A conv over every image of the batch: a chunk then holds an accumulator block
    per image (:func:`~fxpgen.compiler.conv_emit.image_blocks`)."""
    chunk_rows = None
    if lo.batch > 1:
        ow, oh, depth = out_lay.width, out_lay.height, lo.cfg.acc_depth
        if image_blocks(depth, lo.batch, ow) is None:
            most = max(n for n in range(1, lo.batch) if image_blocks(depth, n, ow) is not None)
            raise DoesNotFit(f"{op.name}: a batch of {lo.batch} output rows of {ow} pixels does not fit "
                             f"the accumulators (acc_depth {depth}): at most {most} images fit")
        chunk_rows = max(n for n in range(1, oh + 1) if image_blocks(depth, lo.batch, n * ow) is not None)
    plan = lo.plan_conv(op, band_rows_per_chunk, chunk_rows)
    res_lay = lo.layouts[plan.residual] if plan.residual else None
    lo.emit_conv(plan, lo.layouts[op.input], out_lay, res_lay, more=lo.image_maps(op, plan))


def _lower_maxpool(lo: _Lowering, op: QMaxPool, i: int) -> None:
    emit_maxpool(lo.em, lo.qg, op, lo.maps[op.input][i], lo.maps[op.output][i])


def _lower_add(lo: _Lowering, op: QAdd, i: int) -> None:
    emit_add(lo.em, lo.qg, op, lo.maps[op.a][i], lo.maps[op.b][i], lo.maps[op.output][i])


def _lower_concat(lo: _Lowering, op: QConcat, i: int) -> None:
    emit_concat(lo.em, [lo.maps[t][i] for t in op.sources], lo.maps[op.output][i])


def _lower_slice(lo: _Lowering, op: QSlice, i: int) -> None:
    emit_slice(lo.em, op, lo.maps[op.input][i], lo.maps[op.output][i], lo.cfg.lanes)


def _lower_resize(lo: _Lowering, op: QResize, i: int) -> None:
    emit_resize(lo.em, op, lo.maps[op.input][i], lo.maps[op.output][i])


def _lower_mul(lo: _Lowering, op: QMul, i: int) -> None:
    emit_mul(lo.em, lo.qg, op, lo.maps[op.a][i], lo.maps[op.b][i], lo.maps[op.output][i])


def _lower_lut(lo: _Lowering, op: QLut, i: int) -> None:
    slot = lut_slot(lo.qg, op, lo.cfg.lut_tables)
    if i == 0:
        load_lut_table(lo.em, op, slot)
    emit_lut_groups(lo.em, slot, lo.maps[op.input][i], lo.maps[op.output][i])


def _check_units(qg: QGraph, cfg: CoreConfig) -> None:
    """Refuse a graph whose ops need vector-unit parts the core was built without."""
    needs = [(QLut, cfg.lut_tables > 0, "lookup tables (its lut_tables is 0)"),
             (QMul, cfg.lane_multipliers, "lane multipliers (built without them)")]
    for kind, present, part in needs:
        users = [op.name for op in qg.ops if isinstance(op, kind)]
        if users and not present:
            raise ValueError(f"{', '.join(users[:3])}{' ...' if len(users) > 3 else ''} need the "
                             f"vector unit's {part}, which this core lacks")


#: How each op type but the convs and average pools (:func:`_lower_conv`) is lowered,
#: an image at a time: (lowering state, op, image of the batch).
_LOWERINGS = {QMaxPool: _lower_maxpool, QAdd: _lower_add, QConcat: _lower_concat, QSlice: _lower_slice,
              QResize: _lower_resize, QMul: _lower_mul, QLut: _lower_lut}
