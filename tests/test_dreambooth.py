"""DreamBooth: the checkpoint round trip (original layout in, trained, original layout out with the same keys and
shapes, loadable by the standalone adapter), the prior-preservation loss as specified (one forward for instance and
class images equals two; the class term scales with its weight), class images generated once and reused, concepts
JSON, text-encoder training that stops at its fraction, resume."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from recording import RecordingReporter as Collect
from scal_sdt.config import speak
from scal_sdt.dreambooth.concepts import concepts_of
from scal_sdt.dreambooth.config import DreamBoothConfig
from scal_sdt.dreambooth.trainer import DreamBoothJob, prepare_concepts, train_dreambooth
from scal_sdt.host.checkpoint import read_state_dict, save_checkpoint
from scal_sdt.host.standalone import load_components, load_host


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from scal_sdt.toy_world.concepts import make_held_out_colour_set

    root = tmp_path_factory.mktemp("db")
    make_held_out_colour_set(root / "inst", 4, seed=1)
    return root


def config(root, tmp_path, **kw):
    base = dict(model="tiny-sd1", name="dbt", instance_data=str(root / "inst"),
                instance_prompt="a photo of sks [filewords]", class_data=str(root / "cls"),
                class_prompt="a photo of a shape", num_class_images=2, class_steps=2, steps=2, resolution=64,
                lr="1e-3", out=str(tmp_path / "out"), log_dir=str(tmp_path / "run"), preview_every=0, save_every=0,
                device="cpu")
    base.update(kw)
    return DreamBoothConfig(**base)


def test_round_trip_keeps_the_checkpoints_layout_and_learns(folders, tmp_path):
    source = save_checkpoint(load_components("tiny-sd1"), tmp_path / "src.safetensors")
    cfg = config(folders, tmp_path, model=str(source), save_fp16=False)
    result = train_dreambooth(cfg, load_host(str(source), device="cpu"), Collect())
    assert result.step == 2 and result.final_path == tmp_path / "out" / "dbt.safetensors"
    before, after = read_state_dict(source), read_state_dict(result.final_path)
    assert {k: tuple(v.shape) for k, v in before.items()} == {k: tuple(v.shape) for k, v in after.items()}
    unet_changed = [k for k in before if k.startswith("model.diffusion_model.") and not torch.equal(before[k], after[k])]
    text_changed = [k for k in before if k.startswith("cond_stage_model.") and not torch.equal(before[k], after[k])]
    assert len(unet_changed) > 10 and text_changed == []  # the UNet learned; the text encoder was frozen
    assert result.final_path.with_suffix(".yaml").exists()
    run = json.loads(result.final_path.with_suffix(".json").read_text())
    assert run["config"]["instance_prompt"] == "a photo of sks [filewords]" and run["step"] == 2
    host = load_host(str(result.final_path), device="cpu")  # the standalone adapter loads the result
    with torch.no_grad():
        out = host.predict(torch.randn(1, 4, 8, 8), torch.tensor([10]), host.encode_prompts(["a photo of sks"]))
    assert torch.isfinite(out).all()
    assert len(list((folders / "cls").glob("*.png"))) == 2  # the class images it generated stay for next time
    with pytest.raises(FileExistsError, match="dbt.safetensors"):
        train_dreambooth(cfg, load_host(str(source), device="cpu"), Collect())


def test_prior_preservation_loss_is_instance_plus_weighted_class(folders, tmp_path, tiny_hosts):
    host = tiny_hosts("tiny-sd1")
    losses = {}
    for w in (0.0, 1.0, 2.5):
        cfg = config(folders, tmp_path, prior_loss_weight=w)
        job = DreamBoothJob(cfg, host, prepare_concepts(cfg, host, Collect(), 64), tmp_path / "run")
        with torch.no_grad():
            losses[w] = float(job.loss())
    class_term = losses[1.0] - losses[0.0]
    assert class_term > 0 and losses[2.5] == pytest.approx(losses[0.0] + 2.5 * class_term, rel=1e-5)
    # by hand: the same draws, instance and class images through the UNet separately
    cfg = config(folders, tmp_path, prior_loss_weight=1.0)
    job = DreamBoothJob(cfg, host, prepare_concepts(cfg, host, Collect(), 64), tmp_path / "run")
    data = job.concepts[0]
    inst, cls = job.noised_batch(data.instances), job.noised_batch(data.classes)
    with torch.no_grad():
        parts = []
        for nb, template in ((inst, cfg.instance_prompt), (cls, cfg.class_prompt)):
            cond = host.encode_prompts(job.prompts(template, nb.batch.captions), size=nb.size)
            parts.append(job.objective(nb, host.predict(nb.x_t, nb.t, cond)))
    assert losses[1.0] == pytest.approx(float(parts[0] + parts[1]), rel=1e-4)
    assert losses[0.0] == pytest.approx(float(parts[0]), rel=1e-4)


def test_concepts_json_takes_the_dreambooth_extensions_names(tmp_path):
    path = tmp_path / "concepts.json"
    path.write_text(json.dumps([{"instance_data_dir": "a", "instance_prompt": "sks dog", "class_data_dir": "c",
                                 "class_prompt": "a dog", "num_class_images": 7}, {"instance_data": "b"}]))
    first, second = concepts_of(DreamBoothConfig(name="x", concepts=str(path)))
    assert (first.instance_data, first.class_data, first.num_class_images, first.prior) == ("a", "c", 7, True)
    assert second.instance_data == "b" and not second.prior
    path.write_text(json.dumps([{"instance_data": "a", "colour": "red"}]))
    with pytest.raises(ValueError, match="unknown keys \\['colour'\\]"):
        concepts_of(DreamBoothConfig(name="x", concepts=str(path)))
    with pytest.raises(ValueError, match="class_prompt"):
        DreamBoothConfig(name="x", instance_data="a", class_data="c")


@pytest.mark.parametrize("family", ["tiny-sd2", "tiny-sdxl"])
def test_text_encoders_learn_until_their_fraction_then_stop(folders, tmp_path, family):
    """SD2 (v-prediction) and SDXL (both text encoders): with train_text_encoder they change, and freeze after
    stop_text_encoder of the steps; the run resumes where it stopped."""
    source = save_checkpoint(load_components(family), tmp_path / "src.safetensors")
    cfg = config(folders, tmp_path, model=str(source), class_data="", class_prompt="", train_text_encoder=True,
                 text_encoder_lr=1e-3, stop_text_encoder=0.5, steps=4, save_every=2, save_fp16=False,
                 min_snr_gamma=5.0, noise_offset=0.05)
    result = train_dreambooth(cfg, load_host(str(source), device="cpu"), Collect())
    ckpt = tmp_path / "run" / "models"
    at2, at4 = read_state_dict(ckpt / "dbt-2.safetensors"), read_state_dict(result.final_path)
    before = read_state_dict(source)
    text = [k for k in before if k.startswith(("cond_stage_model.", "conditioner."))]
    assert any(not torch.equal(before[k], at2[k]) for k in text)
    assert all(torch.equal(at2[k], at4[k]) for k in text)  # frozen after half of the steps
    again = train_dreambooth(config(folders, tmp_path, model=str(source), class_data="", class_prompt="",
                                    train_text_encoder=True, text_encoder_lr=1e-3, stop_text_encoder=0.5, steps=6,
                                    save_every=2, save_fp16=False, resume=True),
                             load_host(str(source), device="cpu"), Collect())
    assert again.step == 6


def test_cached_prompts_give_the_same_loss_and_free_the_text_encoder(folders, tmp_path, tiny_hosts):
    host = tiny_hosts("tiny-sd1")
    cfg = config(folders, tmp_path)
    losses = []
    for cache in (False, True):
        job = DreamBoothJob(cfg, host, prepare_concepts(cfg, host, Collect(), 64), tmp_path / "run")
        if cache:
            assert job.cache_prompts(64) == 4 + 1  # four captions, one class prompt
            assert "text" not in host.placement.resident
        with torch.no_grad():
            losses.append(float(job.loss()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    with host.on_device("text"):
        pass  # back for the other tests


def test_full_bf16_with_adafactor_learns_and_saves(folders, tmp_path):
    """The least-memory settings: bf16 weights, gradients and optimizer state; Adafactor's factored moments."""
    source = save_checkpoint(load_components("tiny-sd1"), tmp_path / "src.safetensors")
    cfg = config(folders, tmp_path, model=str(source), master_weights="bf16", optimizer="adafactor", steps=3,
                 class_data="", class_prompt="", lr="1e-3")
    result = train_dreambooth(cfg, load_host(str(source), device="cpu"), Collect())
    assert result.step == 3 and all(v == v for v in result.losses)
    before, after = read_state_dict(source), read_state_dict(result.final_path)
    assert any(not torch.equal(before[k].half(), after[k]) for k in before if k.startswith("model.diffusion_model."))


def test_out_of_memory_steps_down_instead_of_crashing(folders, tmp_path, monkeypatch):
    """A fake out-of-memory error while the UNet sees more than two images: the run turns gradient checkpointing on,
    then halves the batch (doubling the accumulation), and finishes; with nothing left to give, a clear error."""
    host = load_host("tiny-sd1", device="cpu")
    real_predict = host.predict

    def predict(x_t, t, cond):
        if x_t.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_predict(x_t, t, cond)

    monkeypatch.setattr(host, "predict", predict)
    rep = Collect()
    result = train_dreambooth(config(folders, tmp_path, batch_size=2, steps=2), host, rep)
    assert result.step == 2
    downs = [m for m in rep.messages if m.startswith("out of memory")]
    assert downs == ["out of memory before the first step: trying again with gradient checkpointing on",
                     "out of memory before the first step: trying again with batch 1 x 2 accumulated"]
    monkeypatch.setattr(host, "predict", lambda *a: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("oom")))
    with pytest.raises(RuntimeError) as refused:
        train_dreambooth(config(folders, tmp_path, name="dbt2", gradient_checkpointing=True), host, Collect())
    assert "try --master-weights bf16, --optimizer adafactor" in speak(str(refused.value), "cli", DreamBoothConfig)


def test_an_extracted_lora_carries_the_fine_tune(folders, tmp_path):
    """--extract-lora (+ --extract-lora-conv): every Linear layer's and convolution's change as a kohya LoRA (LoCon
    for the convolutions) — at full rank exactly (before + up·down = after); on the source model it brings the UNet's
    output most of the way to the fine-tuned one's (the rest of the change is in norms and biases)."""
    from safetensors.torch import load_file

    from scal_sdt.lora_layers.network import PREFIX, load_kohya

    source = save_checkpoint(load_components("tiny-sd1"), tmp_path / "src.safetensors")
    cfg = config(folders, tmp_path, model=str(source), class_data="", class_prompt="", steps=4, lr="3e-3",
                 extract_lora=128, extract_lora_conv=640, save_fp16=False)
    result = train_dreambooth(cfg, load_host(str(source), device="cpu"), Collect())
    lora_path = tmp_path / "out" / "dbt-lora.safetensors"
    base, tuned = load_host(str(source), device="cpu"), load_host(str(result.final_path), device="cpu")
    lora_sd = load_file(str(lora_path))
    before, after = base.unet_modules(), tuned.unet_modules()
    checked = convs = 0
    for path, module in before.items():
        key = PREFIX + path.replace(".", "_")
        if f"{key}.lora_up.weight" in lora_sd:
            up, down = lora_sd[f"{key}.lora_up.weight"], lora_sd[f"{key}.lora_down.weight"]
            delta = (up.flatten(1) @ down.flatten(1)).reshape(module.weight.shape)
            assert torch.allclose(module.weight + delta, after[path].weight, atol=1e-5), path
            checked += 1
            convs += isinstance(module, torch.nn.Conv2d)
    assert checked > 20 and convs > 10  # LoCon: 3x3 and 1x1 convolutions too
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([100, 700])
    with torch.no_grad():
        cond = base.encode_prompts(["a photo of sks", "a red circle"])
        plain, want = base.predict(x, t, cond), tuned.predict(x, t, cond)
        lora = load_kohya(lora_path, base.unet_modules()).attach()
        got = base.predict(x, t, cond)
        lora.detach()
    assert (got - want).norm() < 0.5 * (plain - want).norm()  # with the convolutions, most of the change


def test_pivotal_tuning_learns_an_embedding_saved_alone_and_bundled(folders, tmp_path):
    """--pivotal-vectors: a new embedding NAME learns with the fine-tune (the prompts say [name]); it is written as a
    WebUI embedding and bundled in the extracted LoRA under bundle_emb.NAME (the WebUI's Lora extension loads it from
    there); an embedding of that name already there is refused."""
    import webui_rules
    from safetensors.torch import load_file

    from scal_sdt.textual_inversion.create import init_vectors
    from scal_sdt.textual_inversion.format import load_embedding

    source = save_checkpoint(load_components("tiny-sd1"), tmp_path / "src.safetensors")
    kw = dict(model=str(source), name="zqpet", instance_prompt="a photo of [name] [filewords]", class_data="",
              class_prompt="", steps=3, lr="1e-4", pivotal_vectors=2, pivotal_init_text="dog", pivotal_lr=0.05,
              extract_lora=8, embeddings_out=str(tmp_path / "emb"))
    train_dreambooth(config(folders, tmp_path, **kw), load_host(str(source), device="cpu"), Collect())
    path = tmp_path / "emb" / "zqpet.safetensors"
    emb = load_embedding(path)
    start = init_vectors(load_host(str(source), device="cpu"), "dog", 2)
    assert emb.name == "zqpet" and emb.vectors["*"].shape == start["clip_l"].shape
    assert not torch.allclose(emb.vectors["*"], start["clip_l"])  # it learned
    seen = webui_rules.load_embedding_file(path)
    assert seen is not None and seen.vectors == 2
    bundled = load_file(str(tmp_path / "out" / "zqpet-lora.safetensors"))
    assert torch.equal(bundled["bundle_emb.zqpet.string_to_param.*"], emb.vectors["*"])
    with pytest.raises(FileExistsError, match="embedding 'zqpet' already exists"):
        train_dreambooth(config(folders, tmp_path, **{**kw, "out": str(tmp_path / "other")}),
                         load_host(str(source), device="cpu"), Collect())


def test_the_preflight_estimate_matches_the_measured_peaks_and_advises():
    """The memory arithmetic against bench/dreambooth.py's H200 measurements (SD1 at 512 px, SDXL at 1024 px): within
    10% for every configuration measured; for an 8 GiB card it names the options that make a plain run fit, in
    order."""
    from pathlib import Path

    from scal_sdt.dreambooth.preflight import ModelSize, advise, estimate

    bench = Path(__file__).resolve().parents[1] / "bench"
    for measured in ("dreambooth_h200.json", "dreambooth_h200_sdxl.json"):
        data = json.loads((bench / measured).read_text())
        family, resolution = data.get("family", "sd1"), data.get("resolution", 512)
        size = ModelSize(data["params"]["unet"], data["params"]["text"], data["params"]["vae"], family)
        for name, run in data["runs"].items():
            options = dict(run["options"])
            frozen = 4 if options.pop("frozen_dtype", "fp16") == "fp32" else 2
            cfg = DreamBoothConfig(name="x", instance_data="d", **options)
            got = estimate(cfg, size, resolution, frozen_bytes=frozen).peak_mib
            assert abs(got - run["peak_mib"]) <= 0.1 * run["peak_mib"], (measured, name, got, run["peak_mib"])
    size = ModelSize(859_520_964, 123_060_480, 83_653_863, "sd1")
    plain = DreamBoothConfig(name="x", instance_data="d", batch_size=2)
    now, advice = advise(plain, size, 512, 8.0)
    advice = [speak(a, "cli") for a in advice]  # what the command line prints
    assert now.peak_mib > 8 * 1024
    assert advice[0].startswith("--optimizer adafactor")  # the optimizer step is the peak: checkpointing waits
    assert any(a.startswith("--gradient-checkpointing") for a in advice)
    peaks = [float(a.split("-> ")[1].split(" GiB")[0]) for a in advice]
    assert peaks == sorted(peaks, reverse=True) and len(set(peaks)) == len(peaks)  # each one lowers the peak
    _, clipped = advise(dataclasses.replace(plain, clip_grad="norm"), size, 512, 8.0)  # fused cannot clip by norm
    assert clipped and not any(a.startswith("--fused-backward") for a in clipped)
    assert float(advice[-1].split("-> ")[1].split(" GiB")[0]) <= 8.0
    with pytest.raises(ValueError, match="more than the 0.001 GiB given"):
        from scal_sdt.dreambooth.trainer import preflight

        preflight(DreamBoothConfig(name="x", instance_data="d", vram_gb=0.001, model="tiny-sd1"),
                  load_host("toy", device="cpu"), Collect())


def test_fused_backward_and_ema_fine_tune_and_save_the_average(folders, tmp_path):
    """The least-memory SDXL recipe on SD1's layout (fused backward, bf16 weights, Adafactor) with an EMA: it learns,
    the checkpoint holds the average (not the last step's weights) and the UNet is left with no hooks."""
    source = save_checkpoint(load_components("tiny-sd1"), tmp_path / "src.safetensors")
    cfg = config(folders, tmp_path, model=str(source), class_data="", class_prompt="", steps=4, lr="1e-3",
                 fused_backward=True, master_weights="bf16", optimizer="adafactor", ema_decay=0.5, save_fp16=False)
    host = load_host(str(source), device="cpu")
    result = train_dreambooth(cfg, host, Collect())
    assert result.step == 4 and all(v == v for v in result.losses)
    before, saved = read_state_dict(source), read_state_dict(result.final_path)
    changed = [k for k in before if k.startswith("model.diffusion_model.") and not torch.equal(before[k], saved[k])]
    assert len(changed) > 10
    unet = host.trainable_modules()[0]
    assert all(not getattr(p, "_post_accumulate_grad_hooks", None) for p in unet.parameters())
    again = tmp_path / "again.safetensors"
    host.save_checkpoint(again)  # the host keeps the last step's weights; the file has their average
    last = read_state_dict(again)
    assert any(not torch.allclose(last[k].float(), saved[k].float()) for k in changed)


def test_two_processes_train_one_checkpoint_under_torchrun(folders, tmp_path):
    """`torchrun --nproc_per_node 2 -m scal_sdt.cli dreambooth ...` (what `accelerate launch --multi_gpu` runs): one
    checkpoint file, a resume state per process, and --resume continues both."""
    from test_loop_fine_tune import torchrun

    common = ["-m", "scal_sdt.cli", "dreambooth", "--model", "tiny-sd1", "--name", "dbd", "--instance-data",
              str(folders / "inst"), "--instance-prompt", "a photo of sks", "--resolution", "64", "--device", "cpu",
              "--lr", "1e-3", "--out", str(tmp_path / "out"), "--log-dir", str(tmp_path / "run"), "--preview-every",
              "0", "--save-every", "1"]
    done = torchrun(*common, "--steps", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("finished at step 2") == 1  # the first process alone reports
    assert (tmp_path / "out" / "dbd.safetensors").exists()
    from recording import latest_state

    state = latest_state(tmp_path / "run")
    assert state["step"] == 2 and len(state["ranks"]) == 2
    assert state["ranks"][0]["job"]["noise"].tolist() != state["ranks"][1]["job"]["noise"].tolist()
    done = torchrun(*common, "--steps", "3", "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finished at step 3" in done.stdout and latest_state(tmp_path / "run")["step"] == 3


def test_min_snr_weighting_keeps_the_masks(tiny_hosts):
    """With --min-snr-gamma each image's loss is its masked mean (a NAME_mask.png still says what counts), then
    weighted by min(SNR, gamma) / SNR: a wrong prediction where the mask is 0 changes nothing."""
    from types import SimpleNamespace

    from scal_sdt.training.objective import NoisedBatch, Objective, min_snr_weights

    host = tiny_hosts("tiny-sd1")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([10, 900])
    mask = torch.ones(2, 1, 8, 8)
    mask[..., 4:] = 0
    nb = NoisedBatch(SimpleNamespace(weights=mask), x0, noise, t, x0, (64, 64))
    target = host.schedule.target(x0, noise, t)
    out = target + 0.1 * torch.randn(2, 4, 8, 8, generator=g)
    spoilt = out.clone()
    spoilt[..., 4:] += 5.0  # wrong only where the mask says "not trained on"
    expect = ((out - target) ** 2)[..., :4].mean(dim=(1, 2, 3))
    objective = Objective(host.schedule, min_snr_gamma=5.0)
    assert torch.allclose(objective.image_losses(nb, out), expect)
    assert torch.allclose(objective.image_losses(nb, spoilt), expect)
    weighted = objective(nb, spoilt)
    assert torch.allclose(weighted, (expect * min_snr_weights(host.schedule, t, 5.0)).mean())


def test_a_concepts_weight_scales_its_loss(folders, tmp_path, tiny_hosts):
    """``weight`` in the concepts JSON multiplies that concept's loss (same draws: twice the weight, twice the loss)."""
    host = tiny_hosts("tiny-sd1")
    losses = {}
    for w in (1.0, 2.0):
        path = tmp_path / f"concepts-{w}.json"
        path.write_text(json.dumps([{"instance_data": str(folders / "inst"), "instance_prompt": "sks [filewords]",
                                     "weight": w}]))
        cfg = config(folders, tmp_path, concepts=str(path), class_data="", class_prompt="")
        assert concepts_of(cfg)[0].weight == w
        job = DreamBoothJob(cfg, host, prepare_concepts(cfg, host, Collect(), 64), tmp_path / "run")
        with torch.no_grad():
            losses[w] = float(job.loss())
    assert losses[2.0] == pytest.approx(2 * losses[1.0], rel=1e-6)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"instance_data": "a", "weight": -1}]))
    with pytest.raises(ValueError, match="weight"):
        concepts_of(DreamBoothConfig(name="x", concepts=str(path)))


def test_concepts_with_repeats_take_turns_by_their_views_and_read_their_caption_extension(folders, tmp_path,
                                                                                           tiny_hosts):
    """kohya's subsets / OneTrainer's concepts: 4 images x 3 repeats against 2 images x 1 take 12 : 2 of the
    turns, spread (never two of the small one in a row); the turns replay on resume; ``.caption`` files are read."""
    import shutil

    from scal_sdt.dreambooth.concepts import next_turn, turn_shares

    small = tmp_path / "small"
    small.mkdir()
    for png in sorted((folders / "inst").glob("*.png"))[:2]:
        shutil.copy(png, small / png.name)
        (small / png.name).with_suffix(".caption").write_text(f"captioned {png.stem}")
    path = tmp_path / "concepts.json"
    path.write_text(json.dumps([{"instance_data": str(folders / "inst"), "repeats": 3},
                                {"instance_data": str(small), "caption_extension": ".caption", "repeats": 1}]))
    cfg = config(folders, tmp_path, concepts=str(path), class_data="", class_prompt="")
    host = tiny_hosts("tiny-sd1")
    job = DreamBoothJob(cfg, host, prepare_concepts(cfg, host, Collect(), 64), tmp_path / "run")
    assert [c.concept.repeats for c in job.concepts] == [3, 1]
    assert sorted(i.caption for i in job.concepts[1].instances.items) == sorted(
        f"captioned {p.stem}" for p in small.glob("*.png"))
    turns = [job.take_turn() for _ in range(14)]
    assert turns.count(0) == 12 and turns.count(1) == 2 and "11" not in "".join(map(str, turns))
    again = DreamBoothJob(cfg, host, job.concepts, tmp_path / "run")
    again.load_state_dict({**job.state_dict(), "turn": 7})
    assert [again.take_turn() for _ in range(7)] == turns[7:]
    assert [next_turn(None, [0, 0], t) for t in range(4)] == [0, 1, 0, 1]  # no repeats given: equal turns
    assert turn_shares([3.0, 1.0]) == [0.75, 0.25]
    path.write_text(json.dumps([{"instance_data": "a", "caption_extension": "txt"}]))
    with pytest.raises(ValueError, match="caption_extension"):
        concepts_of(DreamBoothConfig(name="x", concepts=str(path)))
