"""What an evaluation shows: the labelled grid (a row per saved step and strength, a column per prompt and seed),
the scores plotted per step, and a small HTML page with both, the table and the suggestion."""
from __future__ import annotations

import html
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..files import atomic_path, atomic_write_text

MIN_CELL = 128  # small pictures (the toy model's 64 px) are enlarged to this, pixels kept sharp


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def labelled_grid(rows: list[tuple[str, list[Image.Image]]], columns: list[str], marked: int | None = None) -> Image.Image:
    """``rows``: (label, pictures) each; ``columns``: a label per picture; ``marked``: the row index to frame (the
    suggested step)."""
    w, h = rows[0][1][0].size
    scale = max(1, -(-MIN_CELL // max(w, h)))
    cw, ch = w * scale, h * scale
    font = _font(13)
    left, top = 120, 18 + 15 * max(len(textwrap.wrap(c, max(8, cw // 7))) for c in columns)
    grid = Image.new("RGB", (left + cw * len(columns), top + ch * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for j, label in enumerate(columns):
        for k, line in enumerate(textwrap.wrap(label, max(8, cw // 7))):
            draw.text((left + j * cw + 4, 4 + 15 * k), line, fill="black", font=font)
    for i, (label, images) in enumerate(rows):
        y = top + i * ch
        for k, line in enumerate(label.split("\n")):
            draw.text((6, y + 6 + 16 * k), line, fill="#c33" if i == marked else "black", font=font)
        for j, im in enumerate(images):
            grid.paste(im.resize((cw, ch), Image.NEAREST) if scale > 1 else im, (left + j * cw, y))
        if i == marked:
            draw.rectangle([left, y, left + cw * len(columns) - 1, y + ch - 1], outline="#c33", width=3)
    return grid


def scores_plot(rows: list[dict], suggested: int, path: Path) -> Path:
    """The scores per saved step on one figure (a panel each), the suggested step marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from .suggest import SCORES

    keys = [k for k in SCORES if any(r.get(k) is not None for r in rows)]
    fig = Figure(figsize=(7, 1.2 + 1.6 * max(1, len(keys))), dpi=100)
    axes = fig.subplots(max(1, len(keys)), 1, sharex=True, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        ax.plot([s for s, _ in pts], [v for _, v in pts], "o-", color="#284" if SCORES[key][1] > 0 else "#c33")
        ax.set_ylabel(SCORES[key][0] + (" ↑" if SCORES[key][1] > 0 else " ↓"), fontsize=8)
        ax.axvline(suggested, color="#48a", linestyle="--")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel(f"step (suggested: {suggested})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def write_page(path: Path, title: str, rows: list[dict], suggested: int, reason: str, grid: str, plot: str) -> Path:
    """index.html beside the grid and the plot (linked by file name)."""
    from .suggest import SCORES

    keys = [k for k in SCORES if any(r.get(k) is not None for r in rows)]
    e = html.escape
    head = "".join(f"<th>{e(SCORES[k][0])}</th>" for k in keys)
    body = "".join(
        f"<tr{' class=suggested' if r['step'] == suggested else ''}><td>{r['step']}</td>"
        + "".join(f"<td>{r[k]:.4f}</td>" if r.get(k) is not None else "<td>–</td>" for k in keys) + "</tr>"
        for r in rows)
    atomic_write_text(path, f"""<!doctype html><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}}td,th{{padding:2px 8px;text-align:right}}
tr.suggested{{background:#fdd;font-weight:bold}}img{{max-width:100%}}</style>
<h1>{e(title)}</h1><p><b>Suggested: step {suggested}</b> — {e(reason)}</p>
<table><tr><th>step</th>{head}</tr>{body}</table>
<p><img src="{e(grid)}" alt="grid"></p><p><img src="{e(plot)}" alt="scores"></p>
""")
    return path
