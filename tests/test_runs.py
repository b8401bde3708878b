"""runs.py is the one way a run is set up: the command line and the page give the same file for the same options
(presets included), the metadata names the model the run trained on, and each config type finds its trainer."""
import dataclasses
import json

import pytest
import torch

from scal_sdt import cli, runs
from scal_sdt.host.standalone import load_host
from scal_sdt.hypernetwork.config import HypernetworkConfig
from scal_sdt.textual_inversion.config import EmbeddingConfig
from scal_sdt.textual_inversion.format import load_embedding
from scal_sdt.training.report import Reporter

# the same run from every entrance: a preset that changes what is trained (12gb on SD1: batch 4, bf16 — kept fp32
# on the CPU — no checkpointing), a few steps at the tiny model's 64 px
COMMON = dict(model="tiny-sd1", data="demo", steps=3, preset="12gb", save_every=0, preview_every=0, seed=3)


def cli_args(cfg: dict, out, log_dir) -> list[str]:
    args = []
    for key, value in {**cfg, "out": str(out), "log_dir": str(log_dir)}.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def page_run(cfg) -> dict:
    pytest.importorskip("gradio", reason="the standalone page needs gradio (pip install 'scal-sdt[ui]')")
    from scal_sdt.ui.standalone import StandaloneTrainer
    from scal_sdt.ui_config import UiConfig

    trainer = StandaloneTrainer(UiConfig(model=cfg.model, device="cpu"))
    updates = list(trainer.run(cfg))
    assert "finished at step" in updates[-1]["text"], updates[-1]["text"]
    return updates[-1]


def without_paths(options: dict) -> dict:
    return {k: v for k, v in options.items() if k not in ("out", "log_dir", "device")}


def test_the_command_line_and_the_page_write_the_same_embedding(tmp_path):
    options = dict(COMMON, name="same", vectors=2, init_text="red")
    assert cli.main(["train-embedding", *cli_args(options, tmp_path / "cli", tmp_path / "cli-run"),
                     "--device", "cpu"]) == 0
    page_run(EmbeddingConfig(**options, device="cpu", out=str(tmp_path / "page"), log_dir=str(tmp_path / "page-run")))
    a, b = (load_embedding(tmp_path / where / "same.safetensors") for where in ("cli", "page"))
    assert a.vectors.keys() == b.vectors.keys()
    for key in a.vectors:
        assert torch.equal(a.vectors[key], b.vectors[key]), key
    assert a.step == b.step == 3
    meta_a, meta_b = (json.loads(e.meta["scal_sdt"]) for e in (a, b))
    assert without_paths(meta_a) == without_paths(meta_b)
    assert meta_b["batch_size"] == 4 and meta_b["precision"] == "auto"  # the page applied the preset (CPU: fp32)
    assert meta_a["model"] == meta_b["model"] == "tiny-sd1"


def test_the_command_line_and_the_page_write_the_same_hypernetwork(tmp_path):
    options = dict(COMMON, name="samehn", lr="1e-4")
    assert cli.main(["train-hypernetwork", *cli_args(options, tmp_path / "cli", tmp_path / "cli-run"),
                     "--device", "cpu"]) == 0
    page_run(HypernetworkConfig(**options, device="cpu", out=str(tmp_path / "page"),
                                log_dir=str(tmp_path / "page-run")))
    a, b = (torch.load(tmp_path / where / "samehn.pt", weights_only=True) for where in ("cli", "page"))
    widths = sorted(k for k in a if isinstance(k, int))
    assert widths and widths == sorted(k for k in b if isinstance(k, int))
    for width in widths:
        for part_a, part_b in zip(a[width], b[width]):
            assert part_a.keys() == part_b.keys()
            for name in part_a:
                assert torch.equal(part_a[name], part_b[name]), (width, name)
    info_a, info_b = (json.loads(x["optional_info"])["options"] for x in (a, b))
    assert without_paths(info_a) == without_paths(info_b) and info_b["batch_size"] == 4


class Quiet(Reporter):
    pass


def test_the_metadata_names_the_model_the_run_trained_on(tmp_path):
    """A config that names no model (the form inside the WebUI sends none: the default is toy) trained on a host
    records the host's model, not the default."""
    host = load_host("tiny-sd1", device="cpu")
    cfg = EmbeddingConfig(name="named", data="demo", steps=1, save_every=0, preview_every=0, out=str(tmp_path / "e"),
                          log_dir=str(tmp_path / "run"))
    assert cfg.model == "toy"
    run = runs.prepare(cfg, host, say=lambda text: None)
    assert run.cfg.model == "tiny-sd1"
    runs.train(run, Quiet())
    emb = load_embedding(tmp_path / "e" / "named.safetensors")
    assert json.loads(emb.meta["scal_sdt"])["model"] == "tiny-sd1"
    assert emb.sd_checkpoint_name == host.model_name == "tiny-sd1"


def test_a_host_keeps_its_device_and_memory_mode_under_a_preset():
    host = load_host("tiny-sd1", device="cpu")
    cfg = EmbeddingConfig(name="x", data="demo", preset="6gb", memory_mode="normal")
    run = runs.prepare(cfg, host, say=lambda text: None)
    # 6gb on SD1: batch 1 x 4, medvram; the host is loaded already: its memory mode stays, precision stays fp32
    assert (run.cfg.batch_size, run.cfg.grad_accum, run.cfg.memory_mode, run.cfg.precision) == (1, 4, "normal", "auto")
    said = []
    own = runs.prepare(dataclasses.replace(cfg, model="tiny-sd1", device="cpu"), explicit={"model", "device"},
                       say=said.append)  # no host: loaded here, in the preset's memory mode
    assert said == ["preset 6gb for sd1: batch 1 x 4, auto, memory medvram, checkpointing True"]
    assert own.host.placement.mode == "medvram" and own.cfg.model == own.host.source == "tiny-sd1"


def test_every_training_config_finds_its_trainer_and_an_unknown_one_is_named():
    from scal_sdt.dreambooth.config import DreamBoothConfig
    from scal_sdt.dreambooth.trainer import train_dreambooth
    from scal_sdt.hypernetwork.trainer import train_hypernetwork
    from scal_sdt.textual_inversion.trainer import train_embedding

    assert runs.trainer_for(EmbeddingConfig(name="x")).train is train_embedding
    assert runs.trainer_for(HypernetworkConfig(name="x")).train is train_hypernetwork
    db = runs.trainer_for(DreamBoothConfig(name="x", instance_data="d", instance_prompt="p"))
    assert db.train is train_dreambooth and db.fine_tunes is not None

    @dataclasses.dataclass(kw_only=True)
    class MyEmbedding(EmbeddingConfig):
        pass

    assert runs.trainer_for(MyEmbedding(name="x")).train is train_embedding  # a subclass finds its base's

    @dataclasses.dataclass
    class Other:
        pass

    with pytest.raises(ValueError, match="no trainer for Other; trainers exist for EmbeddingConfig"):
        runs.trainer_for(Other())
