"""Figures that fit their text: log axes with readable major ticks only, every text inside the canvas (the figure
grows until it does), no two tick labels of an axis overlapping (every other one dropped until none do), and notes
wrapped to the figure's width. Used by every plot before it is saved."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any


def readable_log(axis: Any) -> None:
    """Major ticks at 1, 2, 5 x 10^k (1 x 10^k only over more than 4 decades), written plainly ('0.2', '5', '1e-06');
    minor ticks unlabelled (matplotlib labels them on short log ranges, on top of each other)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = sorted(abs(v) for v in axis.get_view_interval())
    decades = math.log10(hi / lo) if lo > 0 and hi > 0 else 10.0
    subs = (1.0,) if decades > 4 else (1.0, 2.0, 5.0) if decades > 0.7 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=30))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def wrap_note(fig: Any, text: str, fontsize: float = 7) -> str:
    """``text`` wrapped to the figure's width at ``fontsize`` (an average character is ~0.55 of the size)."""
    width_in = fig.get_size_inches()[0]
    chars = max(20, int(width_in * 72 / (fontsize * 0.55)) - 4)
    return "\n".join(textwrap.wrap(text, chars))


def _outside(fig: Any, renderer: Any) -> tuple[float, float, float, float]:
    """How far (pixels) visible text reaches beyond the left, bottom, right and top edges of the canvas. A tick label
    outside its axis' view interval is never drawn: it does not count."""
    from matplotlib.text import Text

    hidden = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo - 1e-12 <= tick.get_loc() <= hi + 1e-12:
                    hidden |= {id(tick.label1), id(tick.label2)}
    width, height = fig.bbox.width, fig.bbox.height
    left = bottom = right = top = 0.0
    for t in fig.findobj(Text):
        if not t.get_visible() or not t.get_text().strip() or id(t) in hidden:
            continue
        bb = t.get_window_extent(renderer)
        left, bottom = max(left, -bb.x0), max(bottom, -bb.y0)
        right, top = max(right, bb.x1 - width), max(top, bb.y1 - height)
    return left, bottom, right, top


def _thin(fig: Any, renderer: Any) -> None:
    """Hide every other tick label of an axis whose shown labels overlap, until none do."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for _ in range(6):
                lo, hi = sorted(axis.get_view_interval())
                labels = [lab for tick in axis.get_major_ticks() for lab in (tick.label1, tick.label2)
                          if lab.get_visible() and lab.get_text().strip()
                          and lo - 1e-12 <= tick.get_loc() <= hi + 1e-12]
                boxes = [lab.get_window_extent(renderer) for lab in labels]
                if not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]):
                    break
                for lab in labels[1::2]:
                    lab.set_visible(False)
                fig.canvas.draw()


def finish(fig: Any, path: Path, dpi: int = 120, rect: tuple[float, float, float, float] | None = None) -> Path:
    """Lay ``fig`` out so that all its text lies inside the canvas (growing it where text reaches past an edge),
    drop overlapping tick labels, save it to ``path`` and close it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                readable_log(axis)
    for _ in range(5):
        fig.tight_layout(rect=rect) if rect else fig.tight_layout()
        fig.canvas.draw()
        left, bottom, right, top = _outside(fig, fig.canvas.get_renderer())
        if max(left, bottom, right, top) <= 0.5:
            break
        w, h = fig.get_size_inches()  # grow by what reaches past the edges, never past 40 x 40 inches
        fig.set_size_inches(min(40.0, w + (left + right + 8) / fig.dpi), min(40.0, h + (bottom + top + 8) / fig.dpi))
    _thin(fig, fig.canvas.get_renderer())
    fig.savefig(path, dpi=dpi)
    close(fig)
    return path


def close(fig: Any) -> None:
    """Free a saved figure (the tests keep them open instead, to look at them)."""
    import matplotlib.pyplot as plt

    plt.close(fig)
