"""The chart of ``fxpgen run --plot`` (:mod:`fxpgen.app.plot`), checked on the figure's
data: per layer its array occupancy and its MAC utilization side by side, its share
of the cycles, and a legend naming each."""

import pytest

from fxpgen.app.plot import CYCLE_SHARE, MAC_UTILIZATION, OCCUPANCY, utilization_chart, utilization_figure

pytest.importorskip("matplotlib")

LAYERS = [
    {"layer": "conv1", "cycles": 600.0, "array_occupancy": 0.75, "mac_utilization": 0.25},
    {"layer": "fc", "cycles": 300.0, "array_occupancy": 0.125, "mac_utilization": 0.0625},
    {"layer": "output", "cycles": 100.0, "array_occupancy": 0.0, "mac_utilization": 0.0},
]


def test_the_figure_holds_occupancy_and_mac_utilization_per_layer():
    from matplotlib import pyplot

    fig = utilization_figure(LAYERS, title="t")
    try:
        ax, = fig.axes
        bars = {c.get_label(): c for c in ax.containers}
        assert set(bars) == {OCCUPANCY, MAC_UTILIZATION}
        assert [p.get_height() for p in bars[OCCUPANCY]] == [0.75, 0.125, 0.0]
        assert [p.get_height() for p in bars[MAC_UTILIZATION]] == [0.25, 0.0625, 0.0]
        for occupancy, util in zip(bars[OCCUPANCY], bars[MAC_UTILIZATION]):
            assert occupancy.get_x() + occupancy.get_width() == pytest.approx(util.get_x())
        dots, = ax.lines
        assert dots.get_label() == CYCLE_SHARE
        assert list(dots.get_ydata()) == [0.6, 0.3, 0.1]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["conv1", "fc", "output"]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [CYCLE_SHARE, OCCUPANCY,
                                                                       MAC_UTILIZATION]
    finally:
        pyplot.close(fig)


def test_the_chart_is_a_png(tmp_path):
    utilization_chart(LAYERS, tmp_path / "u.png", title="t")
    assert (tmp_path / "u.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
