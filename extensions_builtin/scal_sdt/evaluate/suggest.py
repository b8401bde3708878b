"""The suggested step: the best balance of a run's scores, each scaled to 0-1 over its saved steps."""
from __future__ import annotations

#: score -> (what it is called, +1 if higher is better, -1 if lower is)
SCORES = {"fidelity": ("fidelity", 1), "prompt": ("prompt match", 1), "leakage": ("leakage", -1),
          "val_loss": ("validation loss", -1)}


def suggest(rows: list[dict]) -> tuple[int, str]:
    """(the step, why) for ``rows`` ({"step": int, and any of the :data:`SCORES` keys, None where missing}).

    Each score that varies over the steps is scaled to 0 (its worst step) .. 1 (its best); a step's merit is the mean
    of its scaled scores, and the step with the highest merit is suggested (the earlier one of a tie: less
    overfitting for the same merit). With no scores, the last step."""
    if not rows:
        raise ValueError("no saved steps to choose from: train with save_every N to keep steps")
    used = {}
    for key, (_, sign) in SCORES.items():
        values = [r.get(key) for r in rows]
        if any(v is None for v in values) or max(values) - min(values) <= 1e-9:
            continue
        lo, hi = min(values), max(values)
        used[key] = [((v - lo) / (hi - lo)) if sign > 0 else ((hi - v) / (hi - lo)) for v in values]
    if not used:
        return rows[-1]["step"], "no score tells the steps apart: the last step"
    merit = [sum(s[i] for s in used.values()) / len(used) for i in range(len(rows))]
    best = max(range(len(rows)), key=lambda i: (round(merit[i], 6), -i))
    row = rows[best]
    parts = []
    for key in used:
        name, sign = SCORES[key]
        values = [r[key] for r in rows]
        rank = "best" if row[key] == (max(values) if sign > 0 else min(values)) else f"{row[key]:.3f}"
        parts.append(f"{name} {row[key]:.3f}" + (" (the best)" if rank == "best" else ""))
    return row["step"], (f"step {row['step']}: the best balance of {', '.join(SCORES[k][0] for k in used)} "
                         f"(merit {merit[best]:.2f} of 1): " + ", ".join(parts))
