"""Which method should I use? The guide's "how to choose" as a table of rules: the goal, the number of images, the
card's memory and the model family give the method, its presets, the expected memory and time, and the reason in
the guide's words.

The guide: Textual Inversion teaches the model to compose a subject from what it can already draw (it cannot learn
a concept the model does not know); a hypernetwork changes the model's weights, so it learns what words cannot say
and suits drawing styles; DreamBooth refurbishes the model and adds what it cannot draw (the best results, but more
than 8 GB and a strength that cannot be turned down); APT (DreamArtist) learns a high-quality concept from one image;
aesthetic gradients improve the look with few words, but alone they do not carry an artist's style: pair them with a
hypernetwork. LoRA (not in the guide, which predates it) adds new weights like DreamBooth in a small file whose
strength can be set, and fits cards DreamBooth does not.

Memory and time come from measurements on a lent NVIDIA H200 (bench/README.md, full-size SD1/SDXL shapes, batch
1): Textual Inversion at 512 px 0.098 s/step and 2.96 GB in fp16; APT with reconstruction 0.216 s and 3.15 GB;
DreamBooth on SD1 0.439 s and 5.7 GB with bf16 weights, checkpointing and Adafactor, 0.314 s and 8.5 GB with 8-bit
AdamW, 0.136 s and 17.4 GB in plain fp32; on SDXL at 1024 px 1.97 s and 7.0 GB, 0.69 s and 15.4 GB. Other cells
are scaled from these by the pixel count (SD2 768 px, SDXL 1024 px) and the UNet's size; hypernetworks and LoRAs
are a TI step plus their small trained state. A consumer card is slower than an H200, so the minutes are a floor.
Each answer lists which of its numbers were measured and which are scaled (SD2 DreamBooth and lowvram never ran
on a GPU: there is none here).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

GOALS = ("subject", "style", "aesthetics", "concept")
GOAL_HELP = ("subject: a character or object the model can draw the parts of; style: an artist's or a drawing "
             "style; aesthetics: better-looking images; concept: something new the model cannot draw")
FAMILIES = ("sd1", "sd2", "sdxl")
MEMORY_PRESETS = (6, 8, 12, 24)  # the memory presets' card sizes (training/presets.py)
CUDA_CONTEXT_GB = 0.6  # what PyTorch's CUDA context takes on the card before any tensor

#: frozen weights in fp16 (GB): UNet + text encoder(s) (training/presets.py)
WEIGHTS_GB = {"sd1": 1.95, "sd2": 2.4, "sdxl": 6.7}
#: a TI step's activations per image at the family's size, fp16, no checkpointing (GB): SD1's measured 1.0 GB at
#: 512 px (2.96 GB peak less the weights) by pixel count: SD2 768 px 2.25x, SDXL 1024 px 4x
ACTIVATIONS_GB = {"sd1": 1.0, "sd2": 2.25, "sdxl": 4.0}
#: a TI step at batch 1 on the H200 (s): SD1 measured; SD2 by pixels, SDXL by pixels and its 3x larger UNet
TI_STEP_S = {"sd1": 0.098, "sd2": 0.098 * 2.25, "sdxl": 0.098 * 4 * 3}
CHECKPOINTING = (0.3, 1.55)  # activations kept, time per step (bench: 0.259 vs 0.167 s)
#: DreamBooth presets as measured (peak GB, s/step); SD2 from SD1 by its 768 px activations
DREAMBOOTH = {
    "sd1": [("bf16 weights + checkpointing + Adafactor", 5.7, 0.439), ("fp16 + checkpointing + 8-bit AdamW", 8.5, 0.314),
            ("fp32 AdamW", 17.4, 0.136)],
    "sd2": [("bf16 weights + checkpointing + Adafactor", 6.4, 0.9), ("fp16 + checkpointing + 8-bit AdamW", 9.6, 0.65),
            ("fp32 AdamW", 21.0, 0.3)],
    "sdxl": [("bf16 weights + checkpointing + Adafactor + fused backward", 7.0, 1.973),
             ("bf16 weights + checkpointing + 8-bit AdamW", 15.4, 0.688), ("fp32 AdamW", 52.6, 0.611)],
}
#: what each method's trained state adds to a TI step: (GB, time factor)
EXTRA = {"hypernetwork": (0.35, 1.1), "lora": (0.3, 1.25), "apt": (0.2, 2.2)}
#: what each method is, where it is trained and with which command
METHODS = {
    "textual-inversion": ("Train → SCAL-SDT Embedding", "train-embedding", "scal_sdt_ti"),
    "apt": ("Train → SCAL-SDT Embedding (mode apt)", "train-embedding", "scal_sdt_ti"),
    "hypernetwork": ("Train → SCAL-SDT Hypernetwork", "train-hypernetwork", "scal_sdt_hn"),
    "dreambooth": ("Train → SCAL-SDT DreamBooth", "dreambooth", "scal_sdt_db"),
    "lora": ("Train → SCAL-SDT LoRA", "train-lora", "scal_sdt_lora"),
    "aesthetic-embedding": ("Train → SCAL-SDT Aesthetic embedding", "make-aesthetic-embedding", "scal_sdt_ae"),
}


@dataclass
class Choice:
    method: str
    options: dict  # the chosen form's values (preset, mode, steps…)
    memory_gb: float  # expected peak on the card, CUDA context included
    minutes: float  # expected training time on an H200 (a floor for other cards)
    reason: str
    tab: str = ""
    command: str = ""
    warnings: list[str] = field(default_factory=list)
    also: str = ""  # a companion method (aesthetics: a hypernetwork for an artist's look)
    alternatives: list[str] = field(default_factory=list)
    # where the memory and time come from: measured on a GPU (bench/README.md), or scaled / estimated from those
    measured: list[str] = field(default_factory=list)
    scaled: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        opts = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in self.options.items())
        lines = [f"{self.method}: {self.reason}",
                 f"  expected: about {self.memory_gb:.1f} GB on the card, {_minutes(self.minutes)} on an H200 "
                 "(longer on a consumer card)",
                 f"  train it: {self.tab}, or scal-sdt {self.command} {opts}".rstrip()]
        if self.also:
            lines.append(f"  also: {self.also}")
        lines += [f"  measured: {m}" for m in self.measured]
        lines += [f"  scaled, not measured: {m}" for m in self.scaled]
        lines += [f"  note: {w}" for w in self.warnings]
        lines += [f"  instead: {a}" for a in self.alternatives]
        return "\n".join(lines)


def _minutes(m: float) -> str:
    return f"{m:.0f} min" if m >= 1 else "under a minute"


def memory_preset(vram_gb: float) -> str:
    """The largest memory preset the card holds (6gb below 6 GB too, with a warning from :func:`choose`)."""
    fitting = [p for p in MEMORY_PRESETS if p <= vram_gb]
    return f"{fitting[-1] if fitting else MEMORY_PRESETS[0]}gb"


def _ti_step(family: str, preset: str) -> tuple[float, float]:
    """(peak GB, s/step) of a Textual Inversion step with a memory preset (batch x accumulation, checkpointing)."""
    from ..training.presets import PRESETS

    p = PRESETS[preset][family]
    kept, slower = CHECKPOINTING if p["gradient_checkpointing"] else (1.0, 1.0)
    memory = WEIGHTS_GB[family] * (0.5 if p["memory_mode"] == "lowvram" else 1.0) \
        + ACTIVATIONS_GB[family] * kept * p["batch_size"]
    seconds = TI_STEP_S[family] * slower * p["batch_size"] * p["grad_accum"] * (2 if p["memory_mode"] == "lowvram"
                                                                                  else 1)
    return memory + CUDA_CONTEXT_GB, seconds


def _ti_basis(family: str, preset: str, method: str) -> tuple[list[str], list[str]]:
    """(measured, scaled): where a Textual-Inversion-based estimate's numbers come from."""
    from ..training.presets import PRESETS

    p = PRESETS[preset][family]
    measured = ["a Textual Inversion step on SD1 at 512 px, batch 1, fp16: 0.098 s and 2.96 GB (H200)"]
    scaled = []
    if family != "sd1":
        scaled.append(f"{family} from SD1 by the pixel count ({ {'sd2': '768', 'sdxl': '1024'}[family]} px)"
                      + (" and SDXL's 3x larger UNet" if family == "sdxl" else ""))
    if p["batch_size"] > 1 or p["grad_accum"] > 1:
        scaled.append(f"batch {p['batch_size']} x {p['grad_accum']} accumulation from the batch-1 step")
    if p["gradient_checkpointing"]:
        measured.append("gradient checkpointing's cost: 1.55x the time (0.259 vs 0.167 s, the DreamBooth bench)")
        scaled.append("checkpointing keeping 30% of the activations (an estimate)")
    if p["memory_mode"] == "lowvram":
        scaled.append("lowvram (the UNet streamed block by block): half the weights on the card and twice the time — "
                      "an estimate; lowvram was never measured on a GPU")
    elif p["memory_mode"] == "medvram":
        scaled.append("medvram taken as normal for the step (its saving is between steps): an estimate")
    if method == "apt":
        measured.append("APT with reconstruction on SD1: 0.216 s and 3.15 GB (H200), the 2.2x time")
    elif method in ("hypernetwork", "lora"):
        scaled.append(f"the {method}'s own state and time on top of a TI step (+{EXTRA[method][0]} GB, "
                      f"{EXTRA[method][1]}x): estimates")
    return measured, scaled


def _dreambooth(family: str, vram_gb: float) -> tuple[str, float, float] | None:
    """The fastest measured DreamBooth setting that fits the card, or None."""
    fits = [row for row in DREAMBOOTH[family] if row[1] + CUDA_CONTEXT_GB <= vram_gb]
    return min(fits, key=lambda r: r[2]) if fits else None


def _dreambooth_basis(family: str, name: str) -> tuple[list[str], list[str]]:
    """(measured, scaled) for a DreamBooth row: SD1's and SDXL's rows were measured on an H200, SD2's were not."""
    if family == "sd2":
        sd1 = next(r for r in DREAMBOOTH["sd1"] if r[0] == name)
        return [f"SD1's {name}: {sd1[1]} GB, {sd1[2]} s a step (H200)"], [
            "SD2 (768 px) from SD1's row by its larger weights and activations: an estimate; SD2 DreamBooth was "
            "never measured on a GPU"]
    size = "512 px" if family == "sd1" else "1024 px"
    row = next(r for r in DREAMBOOTH[family] if r[0] == name)
    return [f"{family.upper()} DreamBooth at {size}, batch 1, {name}: {row[1]} GB, {row[2]} s a step (H200)"], []


def _steps(images: int) -> int:
    """DreamBooth and LoRA: about 100 steps an image, 400 to 2000."""
    return max(400, min(2000, 100 * images))


def choose(goal: str, images: int, vram_gb: float, family: str) -> Choice:
    if goal not in GOALS:
        raise ValueError(f"goal must be one of {', '.join(GOALS)}, not {goal!r}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
    if images < 1:
        raise ValueError("images must be at least 1")
    if vram_gb <= 0:
        raise ValueError("vram_gb must be more than 0")
    preset = memory_preset(vram_gb)
    warnings = [f"{vram_gb:g} GB is below the smallest memory preset (6 GB): training may run out of memory; "
                "close other programs, or train on another machine"] if vram_gb < MEMORY_PRESETS[0] else []
    ti_gb, ti_s = _ti_step(family, preset)

    def network(method: str, steps: int, options: dict, reason: str, alternatives: list[str], also: str = "") -> Choice:
        extra_gb, factor = EXTRA.get(method, (0.0, 1.0))
        tab, command, _ = METHODS[method]
        measured, scaled = _ti_basis(family, preset, method)
        return Choice(method, {"preset": preset, **options, "steps": steps}, ti_gb + extra_gb,
                      ti_s * factor * steps / 60, reason, tab, command, warnings, also, alternatives, measured, scaled)

    if goal == "subject" and images == 1:
        return network("apt", 1500, {"mode": "apt", "apt_preset": "dreamartist"},
                       "APT (DreamArtist) learns a high-quality concept from a single image, with a learned negative "
                       "embedding; use NAME in the prompt and NAME-neg in the negative prompt",
                       ["textual-inversion with more pictures of the subject"])
    if goal == "subject":
        return network("textual-inversion", 1000, {},
                       "Textual Inversion composes the subject from what the model can already draw: a small file, "
                       "used by its name in the prompt, that needs no other model. If the model cannot draw what "
                       "makes the subject, choose the goal 'concept'",
                       ["lora for more likeness at a few MB", "apt with only one good picture"])
    if goal == "style":
        return network("hypernetwork", 1000 if images < 50 else 2000, {},
                       "a hypernetwork changes the model's weights, so it learns what cannot be said precisely in "
                       "words: it suits drawing styles; its strength is set at generation",
                       ["lora (also a network with a strength; the format most styles are shared in)",
                        "aesthetic-embedding for the look only, without training"])
    if goal == "aesthetics":
        tab, command, _ = METHODS["aesthetic-embedding"]
        return Choice("aesthetic-embedding", {}, 1.5 + CUDA_CONTEXT_GB, max(images, 1) * 0.05 / 60,
                      "aesthetic gradients nudge each image towards the look of a set of good pictures: quick to "
                      "make, a few words suffice, the content stays (weight under ~0.25); every generation gets "
                      "slower", tab, command, warnings,
                      "for an artist's look, train a hypernetwork on the same pictures and use both: the aesthetic "
                      "weight alone does not carry a style", ["hypernetwork for a style the pictures share"], [],
                      ["1.5 GB for a CLIP image encoder in fp16 and 0.05 s a picture (estimates)"])
    # goal == "concept": what the model cannot draw
    steps = _steps(images)
    db = _dreambooth(family, vram_gb)
    if db is not None:
        name, gb, seconds = db
        tab, command, _ = METHODS["dreambooth"]
        return Choice("dreambooth", {"preset": preset, "steps": steps}, gb + CUDA_CONTEXT_GB, seconds * steps / 60,
                      "DreamBooth fine-tunes the model itself and adds what it cannot draw (a new checkpoint; its "
                      f"strength cannot be turned down; here with {name})", tab, command, warnings, "",
                      ["lora for the same at a few MB and an adjustable strength"], *_dreambooth_basis(family, name))
    need = DREAMBOOTH[family][0][1] + CUDA_CONTEXT_GB
    return network("lora", steps, {"network": "lora", "rank": 16},
                   f"a LoRA adds new weights to the model, as DreamBooth does, in a small file with an adjustable "
                   f"strength; DreamBooth needs about {need:.1f} GB for {family}, more than {vram_gb:g} GB",
                   [f"dreambooth on a card with {need:.0f} GB or more"])
