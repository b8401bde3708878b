"""A small inline SVG of the loss so far: the live loss plot inside the WebUI's progress text."""
from __future__ import annotations


def loss_svg(losses: list[float], width: int = 320, height: int = 80, smooth: float = 0.9) -> str:
    if len(losses) < 2:
        return ""
    avg, ema = 0.0, []
    for i, v in enumerate(losses, start=1):
        avg = smooth * avg + (1 - smooth) * v
        ema.append(avg / (1 - smooth ** i))
    lo, hi = min(losses), max(losses)
    span = (hi - lo) or 1.0

    def points(values):
        n = len(values) - 1
        return " ".join(f"{i * width / n:.1f},{height - (v - lo) / span * (height - 4) - 2:.1f}"
                        for i, v in enumerate(values))

    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" class="scal-sdt-loss">'
            f'<polyline fill="none" stroke="#9ab" stroke-width="1" points="{points(losses)}"/>'
            f'<polyline fill="none" stroke="#c33" stroke-width="2" points="{points(ema)}"/></svg>'
            f'<div>loss {losses[-1]:.4f} (smoothed {ema[-1]:.4f}), range {lo:.4f}–{hi:.4f}</div>')
