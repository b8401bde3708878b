"""The parameters of `scal-sdt audit`: the one source for the CLI, the forms' "Check data" button and the API."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import check_bounds, option

#: the training methods an audit can suggest repeats and steps for
METHODS = ("embedding", "hypernetwork", "dreambooth", "lora")


@dataclass(kw_only=True)
class AuditConfig:
    dir: str = option(help="the data set folder to check (nothing in it is changed)", positional=True, folder=True,
                      group="data set")
    method: str = option("lora", "the training method the data is for (its suggested repeats and steps)",
                         choices=METHODS, group="data set")
    trigger: str = option("", "the trigger word every caption should hold ('' = the first tag most captions share, "
                          "or [name] when captions use it)", group="data set")
    resolution: int = option(512, "the training resolution: the aspect buckets and what counts as tiny", min=64,
                             max=4096, group="data set")
    batch_size: int = option(1, "the training batch size (for the suggested steps)", min=1, group="data set")
    min_side: int = option(0, "images whose shorter side is below this many pixels are tiny; 0 = half the "
                           "resolution", min=0, group="checks")
    near_distance: int = option(6, "near duplicates: at most this many of 64 hash bits differ (-1 = exact copies "
                                "only)", min=-1, max=32, group="checks")
    max_tokens: int = option(75, "captions longer than this many CLIP tokens are long (the text encoder reads 75 at "
                             "a time)", min=1, group="checks")
    rare_count: int = option(1, "tags used in at most this many captions are listed as rare", min=1, group="checks")
    data_source: str = option("", "where the images come from and whether you may train on them (artists' consent, "
                              "licence); written into the report", group="data set")
    out: str = option("scal-sdt-audits", "folder for the report (DIRNAME-audit.txt, .png, .json); never the data set "
                      "folder", folder=True, group="output")

    def __post_init__(self):
        check_bounds(self)
        if not self.dir:
            raise ValueError("dir is required: the data set folder to check")
