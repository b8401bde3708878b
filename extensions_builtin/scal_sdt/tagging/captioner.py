"""Natural-language captions outside the WebUI: BLIP, BLIP-2, GIT and Florence-2 run with transformers from a local
folder or the Hugging Face hub cache (never downloaded, never remote code), batched; and how a sentence joins the
tags (prefix, suffix or replace)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

#: transformers' model_type -> (model class, what it needs: a task prompt for Florence-2)
MODEL_CLASSES = {
    "blip": "BlipForConditionalGeneration",
    "blip-2": "Blip2ForConditionalGeneration",
    "git": "GitForCausalLM",
    "florence2": "Florence2ForConditionalGeneration",
}
FLORENCE_TASK = "<DETAILED_CAPTION>"
#: what to use instead of a remote-code model
REMOTE_HINT = ("BLIP, BLIP-2, GIT or Florence-2 (for Florence-2 the florence-community/Florence-2-base or -large "
               "conversion, not microsoft/Florence-2-*)")
MODES = ("prefix", "suffix", "replace")


class CaptionerError(ValueError):
    pass


def _config(model: str):
    """The model's transformers config from a folder or the hub cache (local files only). Refused: a config that
    asks for the model's own code (``auto_map``: microsoft/Florence-2-* and other remote-code repositories), and a
    captioner whose class this transformers lacks (Florence-2 before transformers had it natively)."""
    import transformers
    from transformers import AutoConfig, PretrainedConfig

    try:
        raw, _ = PretrainedConfig.get_config_dict(model, local_files_only=True)
    except OSError:
        where = "no such folder" if ("/" not in model or Path(model).is_absolute()) and not Path(model).exists() \
            else "not a model folder and not in your Hugging Face hub cache"
        raise CaptionerError(f"captioner {model}: {where} (models are never downloaded here: "
                             "`huggingface-cli download REPO` first, or give a folder)") from None
    kind = raw.get("model_type", "")
    if raw.get("auto_map"):
        raise CaptionerError(f"captioner {model}: its config.json asks for the model's own code (auto_map); "
                             f"SCAL-SDT never runs a model's remote code: use a transformers-native {REMOTE_HINT}")
    if kind in MODEL_CLASSES and not hasattr(transformers, MODEL_CLASSES[kind]):
        raise CaptionerError(f"captioner {model}: this transformers ({transformers.__version__}) has no "
                             f"{MODEL_CLASSES[kind]} (older releases ran it only as remote code, which SCAL-SDT "
                             "never does): upgrade transformers")
    try:
        return AutoConfig.from_pretrained(model, local_files_only=True)
    except ValueError as e:  # a model_type transformers does not know: its code would have to come from the hub
        raise CaptionerError(f"captioner {model}: {str(e).splitlines()[0][:160]} (SCAL-SDT never runs a model's "
                             f"remote code: use a transformers-native {REMOTE_HINT})") from None


@dataclass
class Captioner:
    """A loaded captioning model: :meth:`caption` turns a batch of images into one sentence each."""
    name: str
    kind: str  # the model_type
    model: object
    processor: object
    device: str = "cpu"
    max_new_tokens: int = 40
    prompt: str = ""  # BLIP/BLIP-2: a text the caption continues ("a picture of"); Florence-2: the task

    @classmethod
    def load(cls, model: str, device: str = "cpu", max_new_tokens: int = 40, prompt: str = "") -> "Captioner":
        import torch
        import transformers

        config = _config(model)
        kind = config.model_type
        if kind not in MODEL_CLASSES:
            raise CaptionerError(f"captioner {model}: a {kind!r} model; captioners are "
                                 f"{', '.join(MODEL_CLASSES)} (transformers-native)")
        model_class = getattr(transformers, MODEL_CLASSES[kind])
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        net = model_class.from_pretrained(model, local_files_only=True, dtype=dtype).to(device).eval()
        processor = transformers.AutoProcessor.from_pretrained(model, local_files_only=True)
        if kind == "florence2" and not prompt:
            prompt = FLORENCE_TASK
        return cls(Path(model).name or model, kind, net, processor, str(device), max_new_tokens, prompt)

    def caption(self, images: list[Image.Image]) -> list[str]:
        import torch

        images = [im.convert("RGB") for im in images]
        if not images:
            return []
        if self.kind == "git" or not self.prompt:
            inputs = self.processor(images=images, return_tensors="pt")
        else:
            inputs = self.processor(images=images, text=[self.prompt] * len(images), return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        inputs = {k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in inputs.items() if hasattr(v, "to")}
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        if self.kind == "florence2" and self.prompt:
            texts = [t.replace(self.prompt, "") for t in texts]
        return [" ".join(t.split()) for t in texts]

    def release(self) -> None:
        self.model = None


def as_entry(sentence: str) -> str:
    """A sentence as one caption entry: its commas would split it into tags (the WebUI's and the editor's separator),
    so they become spaces."""
    return " ".join(sentence.replace(",", " ").split())


def with_sentence(tags: list[str], sentence: str, mode: str) -> list[str]:
    """The caption's entries: the sentence before the tags (prefix), after them (suffix), or alone (replace)."""
    if mode not in MODES:
        raise ValueError(f"caption_mode must be one of {', '.join(MODES)}, not {mode!r}")
    entry = as_entry(sentence)
    if not entry:
        return list(tags)
    return {"prefix": [entry, *tags], "suffix": [*tags, entry], "replace": [entry]}[mode]
