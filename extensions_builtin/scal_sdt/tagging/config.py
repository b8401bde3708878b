"""The parameters of `scal-sdt tag`, the Tagger tab and POST /scal-sdt/v1/tag."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import check_bounds, option
from .model import KNOWN, TOY_TAGGER
from .captioner import FLORENCE_TASK, MODES
from .tags import EXISTING, SORTS, TagRules, parse_replace, split_list

DEFAULT_GENERAL, DEFAULT_CHARACTER = 0.35, 0.85


@dataclass(kw_only=True)
class TagConfig:
    dir: str = option(help="the folder of images to tag", positional=True, group="dataset", folder=True)
    model: str = option("wd-vit-tagger-v3", "tagger: a folder with model.onnx + selected_tags.csv (or tags.txt, "
                        "tag_mapping.json, top_tags.txt), a Hugging Face repo id or known name in your hub cache, or "
                        "'toy'; several separated by '+' make an ensemble", group="dataset",
                        suggestions=(TOY_TAGGER, *KNOWN))
    existing: str = option("ignore", "an image that already has a caption: ignore (leave it, do not tag it), "
                           "overwrite, append or prepend the new tags (no tag twice)", choices=EXISTING,
                           group="dataset")
    caption_extension: str = option(".txt", "caption file extension", group="dataset")
    recursive: bool = option(True, "tag images in sub-folders too", group="dataset")

    general_threshold: float = option(0.0, "score a general tag needs; 0 = the model's published P=R point, or "
                                      f"{DEFAULT_GENERAL}", min=0.0, max=1.0, group="tags")
    character_threshold: float = option(DEFAULT_CHARACTER, "score a character tag needs", min=0.0, max=1.0,
                                        group="tags")
    mcut_general: bool = option(False, "MCut: cut general tags at the largest gap between scores instead",
                                group="tags")
    mcut_character: bool = option(False, "MCut for character tags (at least 0.15)", group="tags")
    rating: bool = option(False, "write the most likely rating as the first tag", group="tags")
    exclude: str = option("", "tags never written, comma-separated", group="tags")
    exclude_regex: str = option("", "tags matching this regular expression are never written", group="tags")
    add_tags: str = option("", "tags written first in every caption (e.g. a trigger word), comma-separated",
                           group="tags")
    first_tags: str = option("", "tags moved to the front when present, in this order, comma-separated",
                             group="tags")
    replace: str = option("", "search and replace: old=new, comma-separated (empty new removes the tag)",
                          group="tags")
    underscores_to_spaces: bool = option(True, "write 'long hair' for long_hair (kaomoji such as ^_^ keep theirs)",
                                         group="tags")
    escape_brackets: bool = option(True, r"write \( \) so the WebUI does not read brackets as emphasis",
                                   group="tags")
    sort: str = option("confidence", "order of tags within a category", choices=SORTS, group="tags")
    weights: bool = option(False, "write (tag:0.87) with each score", group="tags")
    ensemble: str = option("union", "with several models: union or intersection of their tags",
                           choices=("union", "intersection"), group="tags")

    clip_model: str = option("", "CLIP interrogation: an open_clip model you have (a local open_clip folder, 'toy', "
                             "hf-hub:REPO or ARCH/PRETRAINED such as ViT-L-14/openai in your hub cache); '' = off",
                             group="captions")
    clip_terms: str = option("", "the terms CLIP ranks: a file with one per line, or a comma-separated list",
                             group="captions")
    blip: bool = option(False, "start each caption with a sentence from the WebUI's BLIP interrogator (inside the "
                        "WebUI; it loads BLIP as its Interrogate button does)", group="captions")
    clip_top: int = option(3, "how many of the best terms each caption gets", min=1, max=100, group="captions")
    captioner: str = option("", "a sentence for each image from a BLIP, BLIP-2, GIT or Florence-2 model run with "
                            "transformers: a folder, or a repo id in your hub cache (e.g. "
                            "Salesforce/blip-image-captioning-base; never downloaded, no remote code); '' = off",
                            group="captions")
    caption_mode: str = option("prefix", "where the sentence goes: before the tags (prefix), after them (suffix), "
                               "or instead of them (replace)", choices=MODES, group="captions")
    caption_prompt: str = option("", "BLIP / BLIP-2: text the sentence continues (e.g. 'a picture of'); Florence-2: "
                                 f"its task ('' = {FLORENCE_TASK})", group="captions")
    caption_tokens: int = option(40, "the longest sentence, in tokens", min=1, max=512, group="captions")
    sentence_extension: str = option(".caption", "the sentence alone is also written beside the image with this "
                                     "extension (kohya's natural-caption file; the dataset editor shows it beside "
                                     "the tags); '' = not", group="captions")

    provider: str = option("auto", "onnxruntime execution provider: auto (CUDA, ROCm, DirectML, CoreML, CPU, the "
                           "first this onnxruntime has), cuda, rocm, directml, coreml or cpu", group="speed")
    batch_size: int = option(8, "images per inference call", min=1, max=1024, group="speed")
    workers: int = option(4, "threads that read and resize images while the model runs", min=1, max=64,
                          group="speed")
    threads: int = option(0, "onnxruntime CPU threads (0 = its default)", min=0, group="speed")
    cache_dir: str = option("~/.cache/scal-sdt/tags", "scores cached by image content + model: re-tagging skips "
                            "unchanged images ('' = no cache)", group="speed")

    def __post_init__(self):
        check_bounds(self)
        if not self.dir:
            raise ValueError("dir is required: the folder of images to tag")
        if not self.models():
            raise ValueError("model is required")
        if not self.caption_extension.startswith("."):
            raise ValueError(f"caption_extension must start with a dot, not {self.caption_extension!r}")
        if self.blip and self.captioner:
            raise ValueError("blip and captioner both write a sentence: choose one")
        if self.sentence_extension and (not self.sentence_extension.startswith(".")
                                        or self.sentence_extension == self.caption_extension):
            raise ValueError(f"sentence_extension must start with a dot and differ from caption_extension, not "
                             f"{self.sentence_extension!r}")
        if self.clip_model and not self.clip_terms:
            raise ValueError("clip_terms is needed with clip_model: the terms CLIP ranks against each image")
        self.rules(DEFAULT_GENERAL)  # refuses a bad regex or replacement now, not after loading the model

    def models(self) -> list[str]:
        return [m.strip() for m in self.model.split("+") if m.strip()]

    def rules(self, model_general: float) -> TagRules:
        """The tag rules for a model whose own general threshold is ``model_general``."""
        return TagRules(general_threshold=self.general_threshold or model_general,
                        character_threshold=self.character_threshold, mcut_general=self.mcut_general,
                        mcut_character=self.mcut_character, rating=self.rating, exclude=split_list(self.exclude),
                        exclude_regex=self.exclude_regex, add=split_list(self.add_tags),
                        first=split_list(self.first_tags), replace=parse_replace(self.replace),
                        underscores_to_spaces=self.underscores_to_spaces, escape_brackets=self.escape_brackets,
                        sort=self.sort, weights=self.weights)
