"""What the peer benches (peers.py, originals.py, kohya.py) share: the thread setting, the checkpoint file every
side loads, the toy judge's held-out-colour score, and the report (a markdown table, the JSON)."""
from __future__ import annotations

import json
import os
from pathlib import Path


def add_report_args(ap) -> None:
    """``--threads`` and ``--json``, as every peer bench takes them."""
    ap.add_argument("--threads", type=int, default=0,
                    help="OMP/MKL threads for every side and the judging (0: torch's default); on a shared CPU 1 is "
                         "steadier")
    ap.add_argument("--json", help="write the results here")


def use_threads(threads: int) -> dict:
    """Set ``threads`` for torch in this process (the judging: two threads on a busy 2-core CPU ran 20x slower than
    one) and return the environment that gives the sides' processes the same; nothing when 0."""
    if not threads:
        return {}
    import torch

    torch.set_num_threads(threads)
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def write_model(model: str, folder: Path) -> Path:
    """``model`` (toy, tiny-sd1, ...) as a single-file checkpoint in ``folder``, written by our ``save_checkpoint``."""
    from scal_sdt.host.checkpoint import save_checkpoint
    from scal_sdt.host.standalone import load_components

    folder.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(load_components(model), folder / f"{model}.safetensors")


class HeldOutColourJudge:
    """The toy judge on the held-out colour (pink): 32 "a large WORD SHAPE on a ... background" pictures (any shape
    but the held-out one) drawn on our standalone host with the toy model, sampler seed 9, and the fraction it
    calls pink (chance 1/12). The same prompts, tokens and seeds for every side's result."""

    def __init__(self):
        from scal_sdt.host.standalone import load_host
        from scal_sdt.toy_world.build import JUDGE, PRETRAINED
        from scal_sdt.toy_world.judge import Judge
        from scal_sdt.toy_world.quality import prompt_set
        from scal_sdt.toy_world.world import HELD_OUT, SHAPES

        self.host = load_host("toy", device="cpu")
        self.judge = Judge.load(PRETRAINED / JUDGE)
        self.colour_name = HELD_OUT["colour"]
        self.triples = prompt_set(32, seed=77, shapes=[s for s in SHAPES if s != HELD_OUT["shape"]],
                                  colours=[self.colour_name])

    def vectors(self, path) -> dict:
        """An embedding file's vectors for this host's text encoder."""
        from scal_sdt.textual_inversion.format import load_embedding

        return load_embedding(path).for_encoders(list(self.host.widths))

    def colour(self, word: str, embeddings: dict | None = None, negative: str = "", cfg_scale: float = 5.0) -> float:
        """The fraction of the pictures the judge calls pink when ``word`` stands where the colour goes."""
        from scal_sdt.toy_world.quality import prompt_accuracy

        return prompt_accuracy(self.host, self.judge, self.triples, seed=9, cfg_scale=cfg_scale,
                               colour_words={self.colour_name: word}, embeddings=embeddings,
                               negative=negative)["colour"]


def table(header: list[str], rows: list[list]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def write_json(path: str | None, results: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(results, indent=2, default=str))


def load_average() -> float:
    """The 1-minute load average (what else the CPU was running), for the report."""
    return os.getloadavg()[0]
