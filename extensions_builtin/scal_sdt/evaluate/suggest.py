"""The suggested step. Fidelity says how well the concept is learnt; prompt match, leakage and validation loss say
what it costs. The suggestion is the step of the highest fidelity among the steps that pay little: prompt match
within ``tolerance`` (a fraction) of its best, leakage within ``tolerance`` (cosine distance) of its lowest,
validation loss within ``tolerance`` (a fraction) of its lowest. Measured on the toy world (bench/evaluate_toy.py):
fidelity rises and falls with the judge's accuracy, while prompt match falls as a run overfits."""
from __future__ import annotations

#: score -> (what it is called, +1 if higher is better, -1 if lower is)
SCORES = {"fidelity": ("fidelity", 1), "prompt": ("prompt match", 1), "leakage": ("leakage", -1),
          "val_loss": ("validation loss", -1)}
TOLERANCE = 0.07


def _have(rows: list[dict], key: str) -> bool:
    return all(r.get(key) is not None for r in rows)


def suggest(rows: list[dict], tolerance: float = TOLERANCE) -> tuple[int, str]:
    """(the step, why) for ``rows`` ({"step": int, and any of the :data:`SCORES` keys, None where not measured}),
    oldest first. Without fidelity the lowest validation loss decides; with neither, the last step."""
    if not rows:
        raise ValueError("no saved steps to choose from: train with save_every N to keep steps")
    allowed, guards = list(rows), []
    if _have(rows, "prompt"):
        best = max(r["prompt"] for r in rows)
        allowed = [r for r in allowed if r["prompt"] >= best * (1 - tolerance)]
        guards.append(f"prompt match within {tolerance:.0%} of its best ({best:.3f})")
    if _have(rows, "leakage"):
        low = min(r["leakage"] for r in rows)
        allowed = [r for r in allowed if r["leakage"] <= low + tolerance]
        guards.append(f"leakage within {tolerance:g} of its lowest ({low:.3f})")
    if _have(rows, "val_loss"):
        low = min(r["val_loss"] for r in rows)
        allowed = [r for r in allowed if r["val_loss"] <= low * (1 + tolerance)]
        guards.append(f"validation loss within {tolerance:.0%} of its lowest ({low:.4f})")
    if _have(rows, "fidelity"):
        if not allowed:  # the guards exclude each other's best steps: fidelity alone
            allowed, guards = list(rows), []
        pick = max(allowed, key=lambda r: (r["fidelity"], -r["step"]))
        why = f"the highest fidelity ({pick['fidelity']:.3f})"
        why += f" of the {len(allowed)} step(s) with {' and '.join(guards)}" if guards else ""
        later = [r["step"] for r in rows if r["step"] > pick["step"] and r not in allowed]
        if later:
            why += f"; later steps {', '.join(map(str, later))} pay for theirs"
        return pick["step"], f"step {pick['step']}: {why}"
    if _have(rows, "val_loss"):
        pick = min(rows, key=lambda r: (r["val_loss"], r["step"]))
        return pick["step"], f"step {pick['step']}: the lowest validation loss ({pick['val_loss']:.4f})"
    return rows[-1]["step"], "no scores to tell the steps apart: the last step"
