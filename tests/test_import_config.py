"""import-config: a kohya_ss GUI JSON, an sd-scripts TOML with its dataset TOML and OneTrainer JSONs (written here in
their projects' documented formats) become our configs, with every option of the file in the report."""
import json
import re
import tomllib

import pytest

from scal_sdt import cli
from scal_sdt.demo_data import make_concept_folder
from scal_sdt.importers.convert import ImportConfig, checked, import_file, read_foreign
from scal_sdt.importers.report import APPROXIMATED, MAPPED, UNSUPPORTED


def reported(imported) -> dict:
    return {e.key: e for e in imported.report.entries}


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "train"
    make_concept_folder(root / "3_mychar", count=4, size=32)  # kohya's N_name: 4 images x 3 repeats
    return root


def kohya_gui_lora(data) -> dict:
    """The kohya_ss GUI's saved LoRA config (as its presets/lora/*.json, with the paths a user's file has)."""
    return {
        "LoRA_type": "Standard", "adaptive_noise_scale": 0, "additional_parameters": "", "block_alphas": "",
        "block_dims": "", "bucket_no_upscale": True, "bucket_reso_steps": 64, "cache_latents": True,
        "cache_latents_to_disk": False, "caption_dropout_every_n_epochs": 0.0, "caption_dropout_rate": 0.05,
        "caption_extension": ".txt", "clip_skip": "2", "color_aug": False, "conv_alpha": 1, "conv_dim": 1,
        "enable_bucket": True, "epoch": 10, "flip_aug": False, "full_fp16": False, "gradient_accumulation_steps": 1,
        "gradient_checkpointing": True, "keep_tokens": "1", "learning_rate": 0.0001, "lr_scheduler": "cosine",
        "lr_warmup": 10, "max_resolution": "512,512", "max_train_steps": "", "min_snr_gamma": 5,
        "mixed_precision": "fp16", "network_alpha": 16, "network_dim": 32, "noise_offset": 0.05,
        "optimizer": "AdamW8bit", "optimizer_args": "weight_decay=0.1 betas=0.9,0.99",
        "output_dir": "/tmp/out", "output_name": "mychar", "pretrained_model_name_or_path": "tiny-sd1",
        "reg_data_dir": "", "sample_prompts": "mychar, 1girl, smiling --n lowres --w 512 --h 512",
        "sample_every_n_steps": 100, "save_every_n_epochs": 2, "save_precision": "fp16", "sdxl": False,
        "seed": "1234", "shuffle_caption": True, "text_encoder_lr": 5e-05, "train_batch_size": 2,
        "train_data_dir": str(data), "unet_lr": 0.0001, "v2": False, "v_parameterization": False,
        "weighted_captions": False, "xformers": "xformers", "scale_weight_norms": 1.0, "network_dropout": 0.1,
    }


def test_a_kohya_ss_gui_lora_json(tmp_path, data):
    path = tmp_path / "kohya.json"
    path.write_text(json.dumps(kohya_gui_lora(data), indent=4))
    imported = read_foreign(path)
    cfg = checked(imported, path)
    assert imported.command == "train-lora" and cfg is not None
    o = imported.options
    assert (o["rank"], o["alpha"], o["network"], o["lr"], o["text_encoder_lr"]) == (32, 16.0, "lora", "0.0001", 5e-05)
    assert o["instance_data"] == str(data) and o["batch_size"] == 2 and o["precision"] == "fp16"
    assert o["steps"] == 10 * 6  # 10 epochs of 4 images x 3 repeats at batch 2
    assert o["warmup_steps"] == 6 and o["save_every"] == 12  # 10% of the steps; every 2 epochs in steps
    assert o["caption_dropout"] == 0.05 and o["keep_tokens"] == 1 and o["shuffle_tags"] is True
    assert o["weight_decay"] == 0.1 and o["optimizer"] == "adamw8bit" and o["seed"] == 1234
    assert o["preview_prompt"] == "mychar, 1girl, smiling" and o["preview_every"] == 100
    rep = reported(imported)
    assert set(kohya_gui_lora(data)) <= set(rep)  # every option of the file is in the report
    assert rep["clip_skip"].status == UNSUPPORTED and rep["scale_weight_norms"].status == UNSUPPORTED
    assert rep["network_dropout"].status == UNSUPPORTED
    assert rep["conv_dim"].status == UNSUPPORTED  # a plain LoRA has no convolution adapters
    assert rep["epoch"].status == APPROXIMATED and "repeats" in rep["epoch"].how
    assert rep["optimizer_args"].status == APPROXIMATED and "betas" in rep["optimizer_args"].how
    text = "\n".join(imported.report.lines())
    assert "not supported, with a value that is NOT used" in text and "clip_skip = '2'" in text


def test_an_sd_scripts_toml_with_its_dataset_toml(tmp_path, data):
    reg = tmp_path / "reg"
    make_concept_folder(reg, colour="blue", count=2, size=32)
    (tmp_path / "dataset.toml").write_text(f"""
[general]
shuffle_caption = true
caption_extension = '.txt'
keep_tokens = 1

[[datasets]]
resolution = 768
batch_size = 2
enable_bucket = true

  [[datasets.subsets]]
  image_dir = '{data / "3_mychar"}'
  num_repeats = 10
  class_tokens = 'sks girl'

  [[datasets.subsets]]
  is_reg = true
  image_dir = '{reg}'
  class_tokens = 'girl'

[[datasets]]
resolution = [1024, 1024]

  [[datasets.subsets]]
  image_dir = '{data}'
""")
    (tmp_path / "train.toml").write_text("""
[model_arguments]
pretrained_model_name_or_path = "tiny-sd1"
v2 = false

[optimizer_arguments]
optimizer_type = "AdamW8bit"
learning_rate = 1e-4
lr_scheduler = "cosine_with_restarts"
lr_scheduler_num_cycles = 3
optimizer_args = ["weight_decay=0.01"]

[training_arguments]
max_train_steps = 1600
mixed_precision = "bf16"
seed = 42
gradient_checkpointing = true
noise_offset = 0.05
max_grad_norm = 1.0
debiased_estimation_loss = true
huber_c = 0.1
loss_type = "smooth_l1"
max_data_loader_n_workers = 4

[network_arguments]
network_module = "lycoris.kohya"
network_dim = 8
network_alpha = 4
network_args = ["algo=loha", "conv_dim=4", "conv_alpha=2", "preset=attn-mlp"]

[saving_arguments]
output_dir = "output"
output_name = "mychar-loha"
save_every_n_steps = 400
save_model_as = "safetensors"

[dataset_arguments]
dataset_config = "dataset.toml"
""")
    imported = read_foreign(tmp_path / "train.toml")
    assert checked(imported, tmp_path / "train.toml") is not None
    o = imported.options
    assert imported.command == "train-lora" and o["network"] == "loha" and o["conv_rank"] == 4
    assert (o["rank"], o["alpha"], o["conv_alpha"]) == (8, 4.0, 2.0)
    assert o["steps"] == 1600 and o["lr_schedule"] == "cosine_restarts" and o["lr_cycles"] == 3
    assert o["weight_decay"] == 0.01 and o["precision"] == "bf16" and o["seed"] == 42
    assert (o["clip_grad"], o["clip_value"]) == ("norm", 1.0)
    assert o["loss"] == "smooth-l1" and o["debiased_estimation"] is True
    # two training subsets (one per dataset): two concepts, each with its repeats, both with the class images
    assert o["concepts"] == str(tmp_path / "train.scal-sdt.concepts.json")
    first, second = imported.concepts.entries
    assert first == {"instance_data": str(data / "3_mychar"), "instance_prompt": "sks girl, [filewords]",
                     "repeats": 10.0, "caption_extension": ".txt", "class_data": str(reg), "class_prompt": "girl",
                     "num_class_images": 2}
    assert second == {"instance_data": str(data), "instance_prompt": "[filewords]", "repeats": 1.0,
                      "caption_extension": ".txt", "class_data": str(reg), "class_prompt": "girl",
                      "num_class_images": 2}
    assert o["resolution"] == 768 and o["batch_size"] == 2 and o["buckets"] is True
    assert o["shuffle_tags"] is True and o["keep_tokens"] == 1
    rep = reported(imported)
    assert rep["network_args"].status == APPROXIMATED and "preset=attn-mlp" in rep["network_args"].how
    entry = rep["datasets[1].resolution"]  # the second dataset's other size is named, not dropped
    assert entry.status == UNSUPPORTED and "768" in entry.how
    assert rep["datasets[1].subsets[0].image_dir"].status == MAPPED
    assert rep["datasets[1].subsets[0].image_dir"].ours == {"concepts[1].instance_data": str(data)}
    assert rep["max_data_loader_n_workers"].status == UNSUPPORTED
    assert rep["datasets[0].subsets[0].num_repeats"].ours == {"concepts[0].repeats": 10.0}


def test_onetrainer_lora_and_embedding_presets(tmp_path, data):
    lora = {
        "backup_after": 10, "base_model_name": "tiny-sd1", "batch_size": 4, "layer_filter_preset": "attn-mlp",
        "learning_rate": 0.0003, "model_type": "STABLE_DIFFUSION_15",
        "output_model_destination": str(tmp_path / "models" / "lora.safetensors"),
        "output_model_format": "KOHYA_LORA", "resolution": "512", "training_method": "LORA", "epochs": 20,
        "lora_rank": 16, "lora_alpha": 1.0, "train_dtype": "BFLOAT_16", "learning_rate_scheduler": "COSINE",
        "loss_weight_fn": "MIN_SNR_GAMMA", "loss_weight_strength": 5.0, "ema": "GPU", "ema_decay": 0.998,
        "gradient_checkpointing": "ON", "timestep_distribution": "LOGIT_NORMAL",
        "optimizer": {"optimizer": "ADAMW", "weight_decay": 0.01, "beta1": 0.9, "fused": True},
        "vae": {"weight_dtype": "FLOAT_32"}, "unet": {"weight_dtype": "FLOAT_16"},
        "text_encoder": {"train": False, "weight_dtype": "FLOAT_16"},
        "concepts": [{"name": "mychar", "path": str(data), "enabled": True, "repeats": 1.0},
                     {"name": "off", "path": "elsewhere", "enabled": False}],
    }
    path = tmp_path / "#sd 1.5 LoRA.json"
    path.write_text(json.dumps(lora, indent=4))
    imported = read_foreign(path)
    assert checked(imported, path) is not None
    o = imported.options
    assert imported.command == "train-lora" and o["rank"] == 16 and o["alpha"] == 1.0 and o["lr"] == "0.0003"
    assert o["instance_data"] == str(data) and o["name"] == "lora" and o["out"] == str(tmp_path / "models")
    assert o["steps"] == 20 * 3  # 12 images (3 repeats in the folder name) at batch 4
    assert o["min_snr_gamma"] == 5.0 and o["ema_decay"] == 0.998 and o["precision"] == "bf16"
    assert o["timestep_distribution"] == "logit-normal" and o["weight_decay"] == 0.01
    assert o["train_text_encoder"] is False and o["gradient_checkpointing"] is True
    rep = reported(imported)
    for key in ("layer_filter_preset", "optimizer.beta1", "optimizer.fused", "unet.weight_dtype", "backup_after"):
        assert rep[key].status == UNSUPPORTED, key

    embedding = {"training_method": "EMBEDDING", "model_type": "STABLE_DIFFUSION_15", "base_model_name": "tiny-sd1",
                 "learning_rate": 0.0003, "learning_rate_warmup_steps": 20, "latent_caching": False,
                 "output_model_destination": "models/embedding.safetensors", "output_model_format": "SAFETENSORS",
                 "resolution": "512", "sample_after": 1,
                 "embedding": {"token_count": 3, "initial_embedding_text": "girl", "placeholder": "<mychar>"},
                 "concepts": [{"name": "c", "path": str(data), "enabled": True}]}
    path = tmp_path / "emb.json"
    path.write_text(json.dumps(embedding))
    imported = read_foreign(path)
    assert checked(imported, path) is not None
    o = imported.options
    assert imported.command == "train-embedding" and o["vectors"] == 3 and o["init_text"] == "girl"
    assert o["name"] == "mychar" and o["data"] == str(data) and o["warmup_steps"] == 20
    assert reported(imported)["sample_after"].status == UNSUPPORTED  # minutes, not steps
    assert reported(imported)["latent_caching"].status == UNSUPPORTED


def test_the_written_config_runs_and_queues(tmp_path, data, capsys):
    src = tmp_path / "kohya.json"
    src.write_text(json.dumps(kohya_gui_lora(data)))
    assert cli.main(["import-config", str(src)]) == 0
    out = tmp_path / "kohya.scal-sdt.toml"
    text = out.read_text()
    assert re.search(r"^# not supported, with a value that is NOT used", text, re.M)
    assert tomllib.loads(text)["command"] == "train-lora"
    printed = capsys.readouterr().out
    assert "clip_skip" in printed and f"wrote {out}" in printed
    assert cli.main(["train-lora", "--config", str(out), "--save-config", str(tmp_path / "resolved.toml")]) == 0
    assert tomllib.loads((tmp_path / "resolved.toml").read_text())["rank"] == 32
    assert cli.main(["queue", "add", str(out), "--queue", str(tmp_path / "q")]) == 0
    assert cli.main(["import-config", str(src)]) == 2  # exists: not replaced without --overwrite


def test_a_value_our_config_refuses_is_reported_not_passed_on(tmp_path, data):
    gui = {**kohya_gui_lora(data), "network_dim": 4096}
    path = tmp_path / "big.json"
    path.write_text(json.dumps(gui))
    imported, _ = import_file(ImportConfig(file=str(path)))
    assert "rank" not in imported.options
    entry = reported(imported)["network_dim"]
    assert entry.status == UNSUPPORTED and "rank" in entry.how and "1024" in entry.how
    assert all(e.status in (MAPPED, APPROXIMATED, UNSUPPORTED) for e in imported.report.entries)


def test_every_kohya_subset_becomes_a_concept_the_trainer_reads(tmp_path):
    """A DreamBooth run of sd-scripts over three subsets (two characters, captions in .caption and .txt, 10 and 2
    repeats) and a regularisation folder: the written concepts JSON holds them all and DreamBooth reads it as
    they are (repeats, caption extension, class images); an option one subset sets otherwise is named."""
    from scal_sdt.dreambooth.concepts import concepts_of
    from scal_sdt.dreambooth.config import DreamBoothConfig

    alice, bob, extra, reg = (tmp_path / n for n in ("alice", "bob", "extra", "reg"))
    for folder, count in ((alice, 3), (bob, 2), (extra, 1), (reg, 4)):
        make_concept_folder(folder, count=count, size=32)
    for png in alice.glob("*.png"):
        png.with_suffix(".caption").write_text("alice, 1girl")
    (tmp_path / "dataset.toml").write_text(f"""
[general]
enable_bucket = true
caption_extension = ".txt"
shuffle_caption = false

[[datasets]]
resolution = 512
batch_size = 1

  [[datasets.subsets]]
  image_dir = '{alice}'
  caption_extension = '.caption'
  class_tokens = 'alice woman'
  num_repeats = 10

  [[datasets.subsets]]
  image_dir = '{bob}'
  class_tokens = 'bob man'
  num_repeats = 2
  flip_aug = true

  [[datasets.subsets]]
  image_dir = '{extra}'

  [[datasets.subsets]]
  is_reg = true
  image_dir = '{reg}'
  class_tokens = 'person'
  num_repeats = 1

  [[datasets.subsets]]
  is_reg = true
  image_dir = '{tmp_path / "more-reg"}'
""")
    (tmp_path / "db.toml").write_text("""
pretrained_model_name_or_path = "tiny-sd1"
dataset_config = "dataset.toml"
learning_rate = 1e-6
max_train_epochs = 2
prior_loss_weight = 1.0
output_name = "pair"
""")
    imported, out = import_file(ImportConfig(file=str(tmp_path / "db.toml")))
    assert imported.command == "dreambooth"
    written = tomllib.loads(out.read_text())
    concepts_file = tmp_path / "db.scal-sdt.concepts.json"
    assert written["concepts"] == str(concepts_file) and concepts_file.is_file()
    assert written["steps"] == 2 * (3 * 10 + 2 * 2 + 1 * 1)  # 2 epochs of every subset's images x repeats
    cfg = DreamBoothConfig(**{k: v for k, v in written.items() if k != "command"})
    a, b, c = concepts_of(cfg)
    assert (a.instance_data, a.repeats, a.caption_extension) == (str(alice), 10, ".caption")
    assert (b.instance_data, b.repeats, b.caption_extension) == (str(bob), 2, ".txt")
    assert (c.instance_data, c.repeats, c.instance_prompt) == (str(extra), 1, "[filewords]")
    assert a.instance_prompt == "alice woman, [filewords]" and b.instance_prompt == "bob man, [filewords]"
    assert {x.class_data for x in (a, b, c)} == {str(reg)} and {x.class_prompt for x in (a, b, c)} == {"person"}
    assert {x.num_class_images for x in (a, b, c)} == {4}  # the folder's own: nothing is drawn
    rep = reported(imported)
    flip = rep["datasets[0].subsets[1].flip_aug"]  # one subset's flip is the run's: said, not hidden
    assert flip.status == APPROXIMATED and "whole run" in flip.how and written["flip"] is True
    assert rep["datasets[0].subsets[4].image_dir"].status == UNSUPPORTED  # a second class folder is named
    text = "\n".join(imported.report.lines())
    assert "concepts[0].caption_extension = '.caption'" in text and "concepts[1].repeats = 2.0" in text

    # the same data as an embedding: one folder is trained, the others are named as not used
    (tmp_path / "ti.toml").write_text('dataset_config = "dataset.toml"\ntoken_string = "alice"\n'
                                      'init_word = "woman"\nmax_train_steps = 10\n')
    ti = read_foreign(tmp_path / "ti.toml")
    assert ti.command == "train-embedding" and ti.concepts is None and ti.options["data"] == str(alice)
    rep = reported(ti)
    assert rep["datasets[0].subsets[1].image_dir"].status == UNSUPPORTED
    assert "one folder" in rep["datasets[0].subsets[1].image_dir"].how


def test_every_onetrainer_concept_with_its_repeats_weight_and_captions(tmp_path):
    """A OneTrainer LoRA over three concepts (repeats 4 / 1, one weighted 0.5, one by samples), one validation
    concept and one disabled: all enabled ones are our concepts; the validation one is the held-out folder."""
    from scal_sdt.dreambooth.concepts import concepts_of
    from scal_sdt.lora.config import LoraConfig

    folders = {n: tmp_path / n for n in ("style", "faces", "hands", "held", "off")}
    for name, folder in folders.items():
        make_concept_folder(folder, count=2 if name != "hands" else 4, size=32)

    def concept(name, **extra):
        return {"image": {"enable_crop_jitter": True, "enable_random_flip": name != "faces",
                          "enable_random_rotate": False, "random_rotate_max_angle": 0.0},
                "text": {"prompt_source": "sample", "prompt_path": "", "enable_tag_shuffling": True,
                         "tag_delimiter": ",", "keep_tags_count": 1},
                "name": name, "path": str(folders[name]), "seed": -1234, "enabled": True,
                "validation_concept": False, "include_subdirectories": False, "image_variations": 1,
                "text_variations": 1, "balancing": 1.0, "balancing_strategy": "REPEATS", "loss_weight": 1.0,
                **extra}

    preset = {"training_method": "LORA", "model_type": "STABLE_DIFFUSION_15", "base_model_name": "tiny-sd1",
              "batch_size": 2, "epochs": 3, "lora_rank": 8, "learning_rate": 1e-4,
              "concepts": [concept("style", balancing=4.0), concept("faces", loss_weight=0.5),
                           concept("hands", balancing=2.0, balancing_strategy="SAMPLES"),
                           concept("held", validation_concept=True), concept("off", enabled=False)]}
    path = tmp_path / "three.json"
    path.write_text(json.dumps(preset, indent=2))
    imported, out = import_file(ImportConfig(file=str(path)))
    written = tomllib.loads(out.read_text())
    cfg = LoraConfig(**{k: v for k, v in written.items() if k != "command"})
    style, faces, hands = concepts_of(cfg)
    assert (style.instance_data, style.repeats, style.weight) == (str(folders["style"]), 4.0, 1.0)
    assert (faces.repeats, faces.weight) == (1.0, 0.5)
    assert hands.repeats == 0.5  # 2 samples an epoch of its 4 images
    assert written["validation_data"] == str(folders["held"])
    assert written["steps"] == 3 * 6  # 3 epochs of 2x4 + 2x1 + 4x0.5 = 12 views at batch 2
    assert written["flip"] is True and written["shuffle_tags"] is True and written["random_crop"] is True
    rep = reported(imported)
    assert rep["concepts[1].image.enable_random_flip"].status == UNSUPPORTED  # faces differ from the first
    assert "first concept" in rep["concepts[1].image.enable_random_flip"].how
    assert rep["concepts[4].path"].status == UNSUPPORTED and "disabled" in rep["concepts[4].path"].how
    assert rep["concepts[0].seed"].status == UNSUPPORTED
    assert rep["concepts[2].balancing"].status == APPROXIMATED
