"""Reading a design's internal signals in a proof harness, without changing it.

A k-induction proof needs invariants on internal state (loop counters, latched
fields) as well as ports. :func:`elaborate_observed` elaborates a component once
and returns its fragment with every signal the component assigns, by name, so a
harness can assert on them; the design and its Verilog stay as they are.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Fragment

__all__ = ["elaborate_observed", "fsm_states", "struct_fields"]


def _collect(fragment: Fragment, prefix: str, found: dict) -> None:
    for statements in fragment.statements.values():
        for statement in statements:
            # The signals a statement drives (amaranth 0.5 exposes no public walk).
            for signal in statement._lhs_signals():
                found.setdefault(prefix + signal.name, signal)
    for sub, name, _ in fragment.subfragments:
        _collect(sub, f"{prefix}{name}." if name else prefix, found)


def elaborate_observed(component, platform=None) -> tuple[Fragment, dict]:
    """``(fragment, signals)``: ``component`` elaborated, and each signal it drives,
    keyed by name (``"row_0"``; ``"loops.i0"`` inside a submodule named ``loops``).
    Add the fragment as the harness's submodule instead of the component."""
    fragment = Fragment.get(component, platform)
    found: dict = {}
    _collect(fragment, "", found)
    return fragment, found


def fsm_states(state) -> dict[str, int]:
    """``{state name: code}`` of an FSM's state signal (``signals["fsm_state"]``),
    read from the decoder amaranth gives it."""
    codes = {}
    for code in range(1 << len(state)):
        try:
            name = state.decoder(code)
        except KeyError:            # codes past the last state
            break
        codes[name.rpartition("/")[0]] = code
    return codes


def struct_fields(signal) -> SimpleNamespace:
    """The fields of an observed signal declared with a ``StructLayout`` (the
    fragment holds the plain signal, not its view), as attributes: each the slice
    of ``signal`` that holds it, read from the signal's struct format."""
    # Amaranth 0.5 keeps the layout only in the signal's display format.
    fields = signal._format._fields
    return SimpleNamespace(**{name: fmt._chunks[0][0] for name, fmt in fields.items()})
