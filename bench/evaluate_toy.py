"""Does the suggested step pick well? On the toy world, a run that overfits (Textual Inversion, LoRA or DreamBooth
on the 16 pink pictures, tiny settings) saves its steps; `scal-sdt evaluate` suggests one; the judge measures every
saved step's held-out accuracy (32 prompts of pink shapes on backgrounds, not the training captions: the judge
sees the colour the trained name stands for; shape and colour both right is printed too) and the table says how far the suggested step is from the best one (the README's table).

    python bench/evaluate_toy.py --method embedding     # also: lora, dreambooth; --out DIR keeps the runs
    python bench/evaluate_toy.py --method lora --judged 128 --judge-at 100,400   # more prompts, fewer steps
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "extensions_builtin"))

from scal_sdt import runs  # noqa: E402
from scal_sdt.evaluate.config import EvaluateConfig  # noqa: E402
from scal_sdt.evaluate.run import evaluate_run  # noqa: E402
from scal_sdt.evaluate.apply import step_applied  # noqa: E402
from scal_sdt.evaluate.steps import saved_steps  # noqa: E402
from scal_sdt.host.standalone import load_host  # noqa: E402
from scal_sdt.toy_world.build import JUDGE, PRETRAINED  # noqa: E402
from scal_sdt.toy_world.concepts import make_held_out_colour_set  # noqa: E402
from scal_sdt.toy_world.judge import Judge  # noqa: E402
from scal_sdt.toy_world.quality import prompt_accuracy, prompt_set  # noqa: E402
from scal_sdt.toy_world.world import HELD_OUT, SHAPES, make_dataset  # noqa: E402
from scal_sdt.training.report import Reporter  # noqa: E402

NAME = "toypink"
#: the overfitting runs: high rates, many steps for 16 pictures
RUNS = {
    "embedding": dict(steps=400, lr="0.05", batch_size=8, template="filewords", init_text="red", save_every=50),
    "lora": dict(steps=400, lr="2e-3", batch_size=4, rank=8, alpha=8, instance_prompt="[filewords]", pivotal_vectors=1,
                 pivotal_init_text="red", pivotal_lr=0.02, save_every=50),
    "dreambooth": dict(steps=300, lr="3e-4", batch_size=4, instance_prompt="[filewords]", pivotal_vectors=1,
                       pivotal_init_text="red", pivotal_lr=0.02, save_every=50),
}
PROMPTS = "a large [name] star on a white background|a large [name] circle on a blue background"


def config(method: str, folder: Path, data: Path):
    from scal_sdt.dreambooth.config import DreamBoothConfig
    from scal_sdt.lora.config import LoraConfig
    from scal_sdt.textual_inversion.config import EmbeddingConfig

    common = dict(model="toy", name=NAME, out=str(folder / "out"), log_dir=str(folder / "run"), preview_every=0,
                  device="cpu", seed=1, **RUNS[method])
    if method == "embedding":
        return EmbeddingConfig(data=str(data), **common)
    kind = LoraConfig if method == "lora" else DreamBoothConfig
    return kind(instance_data=str(data), embeddings_out=str(folder / "emb"), num_class_images=0, **common)


def held_out_accuracy(method: str, run_dir: Path, tcfg: dict, host, judge, judged: int = 32,
                      steps: set[int] | None = None) -> dict[int, dict[str, float]]:
    """The judge's accuracy on ``judged`` held-out prompts (the first 32 are always the same 32) at every saved step,
    or at ``steps``."""
    shapes = [s for s in SHAPES if s != HELD_OUT["shape"]]
    triples = prompt_set(judged, seed=77, shapes=shapes, colours=[HELD_OUT["colour"]])
    out = {}
    for saved in saved_steps(run_dir, method, tcfg):
        if steps and saved.step not in steps:
            continue
        with step_applied(method, saved, host, NAME, 1.0, lambda p: load_host(str(p), "cpu")) as (model, emb):
            out[saved.step] = prompt_accuracy(model, judge, triples, seed=9, colour_words={HELD_OUT["colour"]: NAME},
                                              embeddings=emb or None)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=sorted(RUNS), default="embedding")
    parser.add_argument("--out", default="")
    parser.add_argument("--judged", type=int, default=32, help="held-out prompts the judge sees per step (standard "
                        "error about 0.5/sqrt(N))")
    parser.add_argument("--judge-at", default="", help="judge only these saved steps, comma-separated")
    args = parser.parse_args(argv)
    folder = Path(args.out or tempfile.mkdtemp(prefix="scal-sdt-evaluate-"))
    data = folder / "pink"
    make_held_out_colour_set(data, 16, seed=5)
    t0 = time.time()
    host = load_host("toy", device="cpu")
    run = runs.prepare(config(args.method, folder, data), host)  # the page's way: a fine-tune is put back after
    runs.train(run, Reporter())
    trained = time.time() - t0
    result = evaluate_run(EvaluateConfig(run_dir=str(folder / "run"), prompts=PROMPTS, images=2), host,
                          say=print, load_model=lambda p: load_host(str(p), "cpu"))
    evaluated = time.time() - t0 - trained
    tcfg = json.loads((folder / "run" / "run.json").read_text())["config"]
    accuracy = held_out_accuracy(args.method, folder / "run", tcfg, host, Judge.load(PRETRAINED / JUDGE), args.judged,
                                 {int(s) for s in args.judge_at.split(",") if s})
    colour = {s: a["colour"] for s, a in accuracy.items()}
    best = max(colour, key=lambda s: (colour[s], -s))
    gap = colour[best] - colour.get(result.suggested, float("nan"))
    print(json.dumps({"method": args.method, "accuracy": colour, "both": {s: a["both"] for s, a in accuracy.items()},
                      "scores": result.rows, "suggested": result.suggested,
                      "best": best, "gap": round(gap, 4), "reason": result.reason,
                      "train_s": round(trained, 1), "evaluate_s": round(evaluated, 1), "folder": str(folder)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
