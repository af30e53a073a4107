"""The engines by name: what ``fxpgen run``, ``fxpgen check``, ``fxpgen demo`` and the
benchmarks run programs on.

    engine = make_engine("native", batch=32)
    result = engine.run(NetworkProgram.from_program(prog, qg), inputs)

Every engine implements :class:`fxpgen.sim.engine.Engine`; its constructor takes
its options as keywords (the board's ``port``, the RTL engines' ``batch``, ...)."""

from __future__ import annotations

from fxpgen.boards.engine import BoardEngine
from fxpgen.sim.cycle_model import ModelEngine
from fxpgen.sim.engine import Engine, GoldenEngine, IsaEngine
from fxpgen.sim.rtl_engines import NativeEngine, RtlEngine

__all__ = ["ENGINES", "engine_class", "make_engine"]

#: Engine name -> engine class.
ENGINES: dict[str, type[Engine]] = {cls.name: cls for cls in
                                    (GoldenEngine, IsaEngine, RtlEngine, NativeEngine, BoardEngine,
                                     ModelEngine)}


def engine_class(name: str) -> type[Engine]:
    """The engine class registered as ``name``; ValueError naming the choices otherwise."""
    try:
        return ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}") from None


def make_engine(name: str, **options) -> Engine:
    """An engine ``name`` built with ``options`` (its constructor's keywords)."""
    return engine_class(name)(**options)
