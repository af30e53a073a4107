"""The per-layer utilization chart of ``fxpgen run --plot``: for every HALT segment
(layer), side by side, its array occupancy (``mac_cycles / cycles``: the share of its
cycles in which a vector entered the array) and its MAC utilization (``macs /
(cycles x rows x cols)``: the model's multiply-accumulates against the array's
capacity), with each layer's share of the run's cycles, as a PNG bar chart. Needs
matplotlib (the ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["utilization_chart", "utilization_figure", "OCCUPANCY", "MAC_UTILIZATION", "CYCLE_SHARE"]

#: The legend's labels of the chart's three series.
OCCUPANCY = "array occupancy (mac_cycles / cycles)"
MAC_UTILIZATION = "MAC utilization (MACs / (cycles x rows x cols))"
CYCLE_SHARE = "share of the run's cycles"

#: Width of each of a layer's two bars, in layers (the pair fills 0.8 of its slot).
_BAR = 0.4


def _pyplot():
    """matplotlib's pyplot on the Agg backend; RuntimeError naming the extra when
    matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'fxpgen[bench]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot
    return pyplot


def utilization_figure(layers: list[dict], *, title: str):
    """The chart of ``layers`` (rows of ``fxpgen run``'s layer table:
    :func:`~fxpgen.app.flow.counter_report`'s ``layer``, ``cycles``,
    ``array_occupancy``, ``mac_utilization``) as a matplotlib Figure: per layer an
    occupancy bar and a MAC utilization bar (containers labelled :data:`OCCUPANCY`
    and :data:`MAC_UTILIZATION`) and a dot at its share of the cycles
    (:data:`CYCLE_SHARE`). The caller closes it."""
    plt = _pyplot()
    names = [l["layer"] for l in layers]
    at = range(len(names))
    total = max(sum(l["cycles"] for l in layers), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(names) + 2), 4.5))
    ax.bar([k - _BAR / 2 for k in at], [l["array_occupancy"] for l in layers], _BAR, label=OCCUPANCY)
    ax.bar([k + _BAR / 2 for k in at], [l["mac_utilization"] for l in layers], _BAR, label=MAC_UTILIZATION)
    ax.plot(list(at), [l["cycles"] / total for l in layers], "k.", label=CYCLE_SHARE)
    ax.set_xticks(list(at), names, rotation=90, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def utilization_chart(layers: list[dict], path: Path | str, *, title: str) -> None:
    """Write :func:`utilization_figure` of ``layers`` to ``path`` (PNG)."""
    fig = utilization_figure(layers, title=title)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
