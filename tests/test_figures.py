"""Every figure fits its text: drawn from committed result sets with `vitbench plot`, then checked with
matplotlib's renderer (as a reader at 100% would see it): no two shown tick labels of an axis overlap, and every
text lies inside the canvas."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent / "results/published"
SETS = ["2026-12-07-cpu-2vcpu-process-interval/swin",  # speed ratios (reference, control, compile), numerics
        "2026-12-03-cpu-2vcpu-speed/sdpa",  # token sweep, throughput vs size with series not drawn
        "2026-12-03-cpu-2vcpu-own-speed/compile",  # compile throughput, latency
        "2026-11-21-cpu-xeon-2vcpu/finetune"]  # fine-tune accuracy and curves


def _problems(fig) -> list[str]:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    rend, out = fig.canvas.get_renderer(), []
    width, height = fig.bbox.width, fig.bbox.height
    ticks, shown = set(), []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            boxes = []
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                for lab in (tick.label1, tick.label2):
                    ticks.add(id(lab))
                    if lab.get_visible() and lab.get_text().strip() and lo - 1e-12 <= tick.get_loc() <= hi + 1e-12:
                        boxes.append(lab.get_window_extent(rend))
                        shown.append(lab)
            if any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2)):
                out.append(f"tick labels overlap on {axis.__class__.__name__} of {ax.get_title()!r}")
    for t in [t for t in fig.findobj(matplotlib.text.Text) if id(t) not in ticks] + shown:
        if t.get_visible() and t.get_text().strip():
            bb = t.get_window_extent(rend)
            if bb.x0 < -1 or bb.y0 < -1 or bb.x1 > width + 1 or bb.y1 > height + 1:
                out.append(f"outside the canvas: {t.get_text()[:40]!r}")
    return out


@pytest.mark.parametrize("name", SETS)
def test_every_figure_fits_its_text(name, cli, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    save = plt.Figure.savefig
    monkeypatch.setattr(plt.Figure, "savefig", lambda self, *a, **k: (made.append(self), save(self, *a, **k))[1])
    res = cli("plot", ROOT / name, "--out", tmp_path / "figs")
    assert res.exit_code == 0, res.output
    assert made, res.output
    problems = {p for fig in made for p in _problems(fig)}
    assert not problems, problems


def test_speed_ratio_keeps_compile_gains_apart_and_writes_each_value(tmp_path):
    from vitbench.report.plots import speed_ratio

    rows = [{"pair": "swin_t", "label": "vitbench_keras-tensorflow/swin_t", "compile_mode": mode, "batch_size": 1,
             "comparison": comp, "reference_compile_mode": base, "speed_ratio": v, "speed_ratio_ci_low": v * 0.9,
             "speed_ratio_ci_high": v * 1.1, "speed_verdict": "faster" if v > 1 else "slower", "threshold_pct": 2}
            for mode, comp, base, v in (("graph", "reference", "eager", 0.8), ("graph", "compile", "eager", 4.3))]
    import matplotlib.pyplot as plt

    made = []
    save = plt.Figure.savefig
    plt.Figure.savefig = lambda self, *a, **k: (made.append(self), save(self, *a, **k))[1]
    try:
        speed_ratio(rows, tmp_path / "s.png")
    finally:
        plt.Figure.savefig = save
    (fig,) = made
    assert len(fig.axes) == 2  # the compile gain in a panel of its own
    texts = [t.get_text() for t in fig.findobj(plt.Text)]
    assert "0.80x [0.72, 0.88] slower" in texts and "4.30x [3.87, 4.73] faster" in texts
    labels = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
    assert labels == ["swin_t", "vitbench_keras-tensorflow graph bs1", "swin_t",
                      "vitbench_keras-tensorflow graph vs its eager bs1"]
    assert not _problems(fig)
