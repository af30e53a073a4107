"""The per-layer utilization chart of ``fxpgen run --plot``: for every HALT segment
(layer), the share of its cycles in which a vector entered the array (``mac_cycles /
cycles``), as a PNG bar chart. Needs matplotlib (the ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["utilization_chart"]


def utilization_chart(layers: list[dict], path: Path | str, *, title: str) -> None:
    """Write the chart of ``layers`` (rows of ``fxpgen run``'s layer table: ``layer``,
    ``cycles``, ``mac_cycles``) to ``path``; RuntimeError naming the extra when
    matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'fxpgen[bench]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = [l["layer"] for l in layers]
    util = [l["mac_cycles"] / l["cycles"] if l["cycles"] else 0.0 for l in layers]
    share = [l["cycles"] / max(sum(x["cycles"] for x in layers), 1) for l in layers]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(names) + 2), 4.5))
    ax.bar(range(len(names)), util, label="array utilization (mac_cycles / cycles)")
    ax.plot(range(len(names)), share, "k.", label="share of the run's cycles")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
