"""The utilization bench's report: ``utilization.json``, ``utilization.md`` and
``utilization.png`` from the bench's results (``bench/utilization.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fxpgen.app.flow import jsonable

__all__ = ["totals", "fmt", "write_report"]


def totals(rows_: list[dict]) -> dict:
    """Sums over a network's conv / FC layers (MACs, ideal, RTL and SCALE-Sim cycles),
    the utilizations they give, and how many large convs reach 0.9."""
    cl = [d for d in rows_ if d.get("kind") in ("conv", "fc", "dw")]
    t = {"layers": len(cl), "macs": sum(d["macs"] for d in cl),
         "ideal_cycles": sum(d["ideal_cycles"] for d in cl),
         "rtl_cycles": sum(d["rtl_cycles"] for d in cl),
         "rtl_io_cycles": sum(d.get("rtl_io_cycles", 0) for d in cl)}
    if cl and all("model_cycles" in d for d in cl):
        t["model_cycles"] = sum(d["model_cycles"] for d in cl)
    t["utilization"] = t["ideal_cycles"] / t["rtl_cycles"] if t["rtl_cycles"] else None
    if cl and all(d.get("scalesim_cycles") for d in cl):
        t["scalesim_cycles"] = sum(d["scalesim_cycles"] for d in cl)
        t["scalesim_utilization"] = t["ideal_cycles"] / t["scalesim_cycles"]
        t["rtl_over_scalesim"] = t["rtl_cycles"] / t["scalesim_cycles"]
    big = [d for d in cl if d["kind"] == "conv" and d["out_shape"][1] * d["out_shape"][2] >= 784]
    t["big_conv_layers"] = len(big)
    t["big_conv_at_90pct"] = sum(1 for d in big if (d["utilization"] or 0) >= 0.9)
    return t


def fmt(v, spec=",.0f") -> str:
    """``v`` formatted with ``spec``; a dash for a missing figure."""
    if v is None:
        return "–"
    return format(v, spec)


def write_report(data: dict, results_dir: Path) -> None:
    """``utilization.json``, ``utilization.md`` and ``utilization.png`` from ``data``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "utilization.json").write_text(json.dumps(data, indent=1, default=jsonable))
    rows, cols = data["rows"], data["cols"]
    md = [f"# MAC utilization on a {rows}x{cols} array: RTL vs SCALE-Sim vs ideal", "",
          "Cycles are the core's own `cycles` counter (Verilator) for each layer's HALT segment; "
          "ideal = MACs / (rows x cols); utilization = ideal / cycles. SCALE-Sim 3.0.0 is its "
          "weight-stationary `Total Cycles` for the same array (64 MiB SRAMs, no memory stalls). "
          "See `bench/utilization.py` for the conventions (padding, depthwise).", ""]
    for net, r in data["networks"].items():
        meta, t = r["meta"], r["totals"]
        md += [f"## {net}", ""]
        cfg = meta["config"]
        if net == "digits":
            md.append(f"Whole network on the RTL ({meta['engine']}), {meta['images']} test images, "
                      f"outputs bit-identical to the golden model: "
                      f"{'yes' if meta['outputs_identical_to_golden'] else 'NO'}; whole program "
                      f"{meta['whole_network_cycles']:,.0f} cycles per image (input load and output "
                      "store included). Core: default memories.")
        else:
            md.append(f"{meta['size']}x{meta['size']} input, random weights, {meta['calib_images']} "
                      f"random calibration images; {meta['layers_run']} of {meta['layers_total']} conv/FC "
                      f"layers run, each alone in bands of output rows on the RTL ({meta['engine']}), "
                      f"core spad/acc/wbuf depth {cfg['spad_depth']}/{cfg['acc_depth']}/{cfg['wbuf_depth']}. "
                      "Pooling and add layers are not in the table "
                      f"({', '.join(meta.get('skipped_ops', []))}). Every band's output integers are "
                      "checked against the golden model (for a conv with a fused residual add, against "
                      "the golden conv without it: a band graph has one input; the matmul schedule is "
                      "the same). I/O = the band programs' input load and output store, which a "
                      "whole-network run would not have.")
        if meta.get("command"):
            md += ["", f"Command: `{meta['command']}` (the whole command took "
                   f"{meta.get('wall_seconds', 0) / 60:.0f} min, SCALE-Sim included)."]
        md += ["", "| layer | kind | in | out | k/s | MACs | ideal | RTL cycles | model cycles | util | "
               "SCALE-Sim | SCALE-Sim util | RTL/SCALE-Sim | array busy | I/O cycles | bands | checked |",
               "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for d in r["layers"]:
            ks = (f"{d['kernel'][0]}x{d['kernel'][1]}/{d['stride'][0]}" if "kernel" in d else "")
            busy = d["rtl_mac_cycles"] / d["rtl_cycles"] if d.get("rtl_cycles") else None
            md.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                d["layer"], d["kind"], "x".join(map(str, d.get("in_shape", []))),
                "x".join(map(str, d.get("out_shape", []))), ks, fmt(d.get("macs") or None),
                fmt(d.get("ideal_cycles")), fmt(d.get("rtl_cycles")), fmt(d.get("model_cycles")),
                fmt(d.get("utilization"), ".3f"),
                fmt(d.get("scalesim_cycles")), fmt(d.get("scalesim_utilization"), ".3f"),
                fmt(d.get("rtl_over_scalesim"), ".3f"), fmt(busy, ".3f"),
                fmt(d.get("rtl_io_cycles") if "bands" in d else None),
                d.get("bands", ""), {True: "yes", False: "NO"}.get(d.get("verified"), "")))
        io = (f" Band I/O (not in the RTL figure): {t['rtl_io_cycles']:,.0f} cycles."
              if any("bands" in d for d in r["layers"]) else "")
        big = (f" Convs with >= 784 output pixels at >= 90% utilization: {t['big_conv_at_90pct']} of "
               f"{t['big_conv_layers']}." if t["big_conv_layers"] else "")
        md += ["", f"**Totals over {t['layers']} conv/FC layers:** {t['macs']:,} MACs, ideal "
               f"{t['ideal_cycles']:,.0f} cycles, RTL {t['rtl_cycles']:,.0f} cycles (utilization "
               f"{fmt(t['utilization'], '.3f')}), cycle model {fmt(t.get('model_cycles'))}, SCALE-Sim {fmt(t.get('scalesim_cycles'))} cycles "
               f"(utilization {fmt(t.get('scalesim_utilization'), '.3f')}); RTL / SCALE-Sim = "
               f"{fmt(t.get('rtl_over_scalesim'), '.3f')}.{io}{big}", ""]
    md += _statistics(data["networks"])
    md += ["## Notes", "",
           "- SCALE-Sim 3.0.0 calls `int()` on a one-element array, which NumPy >= 2.4 refuses; the "
           "bench gives that one module a `max` that returns the element (`_numpy2_shim`), nothing else "
           "is changed. Its cycle counts are used as reported.",
           "- Programs run through the engines of `fxpgen.app.engines`, each HALT segment with the "
           "cycle limit of `fxpgen.sim.segments.cycle_budget`.",
           "- A depthwise conv's SCALE-Sim figure is one 1-channel, 1-filter conv times the channel "
           "count, which equals SCALE-Sim's own depthwise (`DP`) mode "
           "(`tests/test_bench_utilization.py` checks the equality on a small layer).", ""]
    (results_dir / "utilization.md").write_text("\n".join(md) + "\n")
    _plot(data, results_dir / "utilization.png")


def _statistics(nets: dict) -> list[str]:
    """Markdown table of the layers' instruction statistics (``matmuls``,
    ``weight_tiles``, ``vectors_per_matmul``, counted from each layer's own
    instructions by the bench), for the layers that have them."""
    rows = [(net, d) for net, r in nets.items() for d in r["layers"] if "matmuls" in d]
    if not rows:
        return []
    md = ["## Instructions per layer", "",
          "Counted from each layer's own instructions (summed over its bands): MATMULs, weight "
          "tiles loaded (LOADWs) and the array vectors a MATMUL streams on average.", "",
          "| network | layer | util | MATMULs | weight tiles | vectors per MATMUL |",
          "|---|---|---:|---:|---:|---:|"]
    for net, d in rows:
        md.append(f"| {net} | {d['layer']} | {fmt(d.get('utilization'), '.3f')} | {fmt(d['matmuls'])} | "
                  f"{fmt(d['weight_tiles'])} | {fmt(d['vectors_per_matmul'], ',.1f')} |")
    return md + [""]


def _plot(data: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = [(n, r) for n, r in data["networks"].items()
            if any(d.get("utilization") for d in r["layers"])]
    if not nets:
        return
    fig, axes = plt.subplots(len(nets), 1, figsize=(16, 3.8 * len(nets)), squeeze=False)
    for ax, (net, r) in zip(axes[:, 0], nets):
        ls = [d for d in r["layers"] if d.get("utilization") is not None]
        x = np.arange(len(ls))
        ax.bar(x - 0.2, [d["utilization"] for d in ls], 0.4, label="RTL", color="tab:blue")
        ax.bar(x + 0.2, [d.get("scalesim_utilization") or 0 for d in ls], 0.4, label="SCALE-Sim",
               color="tab:orange")
        ax.axhline(0.9, color="gray", ls=":", lw=1)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("MAC utilization")
        ax.set_xticks(x, [f"{d['layer']} ({d['kind']})" for d in ls], rotation=90, fontsize=6)
        ax2 = ax.twinx()
        ax2.plot(x, [d["rtl_cycles"] for d in ls], "k.-", lw=0.8, label="RTL cycles")
        ax2.plot(x, [d.get("scalesim_cycles") or np.nan for d in ls], ".--", color="tab:red", lw=0.8,
                 label="SCALE-Sim cycles")
        ax2.set_yscale("log")
        ax2.set_ylabel("cycles")
        t = r["totals"]
        ax.set_title(f"{net} on {data['rows']}x{data['cols']}: total utilization RTL "
                     f"{fmt(t['utilization'], '.3f')}, SCALE-Sim {fmt(t.get('scalesim_utilization'), '.3f')}",
                     fontsize=9)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left", bbox_to_anchor=(1.06, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
