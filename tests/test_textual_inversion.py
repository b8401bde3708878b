"""Textual Inversion end to end on the tiny models: what is trained, what is written, what is refused."""
import hashlib

import pytest
import torch

import webui_rules
from scal_sdt.demo_data import make_concept_folder
from scal_sdt.textual_inversion.config import EmbeddingConfig
from scal_sdt.textual_inversion.create import create_embedding, init_vectors, load_for_host
from scal_sdt.textual_inversion.format import EmbeddingError, load_embedding
from scal_sdt.textual_inversion.trainer import train_embedding
from recording import latest_state
from recording import RecordingReporter as Collect


def config(tmp_path, family="tiny-sd1", **kw):
    data = tmp_path / "data"
    if not data.exists():
        make_concept_folder(data, count=4)
    base = dict(model=family, data=str(data), name="zq", steps=4, lr="0.01", out=str(tmp_path / "emb"),
                log_dir=str(tmp_path / "run"), save_every=2, preview_every=0, template="subject")
    base.update(kw)
    return EmbeddingConfig(**base)


def model_digest(host):
    h = hashlib.sha256()
    for part in host.components.modules().values():
        for name, t in sorted(part.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def test_only_the_placeholder_vectors_are_trained(tmp_path, tiny_hosts):
    host = tiny_hosts("tiny-sd1")
    before = model_digest(host)
    res = train_embedding(config(tmp_path, steps=3), host, Collect())
    assert model_digest(host) == before  # frozen weights bit-identical, table included
    learned = load_embedding(res.final_path).for_encoders(["clip_l"])["clip_l"]
    start = init_vectors(host, "*", 1)["clip_l"]
    assert not torch.equal(learned, start)
    assert all(not p.requires_grad for m in host.components.modules().values() for p in m.parameters())


@pytest.mark.parametrize("family,fmt", [("tiny-sd1", "safetensors"), ("tiny-sd1", "pt"), ("tiny-sd1", "png"),
                                        ("tiny-sd2", "safetensors"), ("tiny-sdxl", "safetensors"), ("tiny-sdxl", "pt")])
def test_saved_files_pass_the_webui_rules_and_round_trip(tmp_path, tiny_hosts, family, fmt):
    host = tiny_hosts(family)
    res = train_embedding(config(tmp_path, family, steps=2, format=fmt, vectors=2), host, Collect())
    assert res.final_path.suffix == "." + fmt and res.final_path.exists()
    seen = webui_rules.load_embedding_file(res.final_path)
    assert seen is not None and seen.name == "zq"
    assert seen.shape == sum(host.widths.values()) and seen.vectors == 2  # the WebUI's shape check passes
    ours = load_for_host(res.final_path, host)
    assert ours.num_vectors == 2
    if fmt != "pt" or family != "tiny-sdxl":
        assert ours.step == 2 and ours.sd_checkpoint == host.model_hash
    again = load_embedding(res.final_path)
    for key, t in ours.vectors.items():
        assert torch.equal(t, again.vectors[key])
    # the checkpoint copy from --save-every is there too
    assert list((tmp_path / "run" / "embeddings").glob(f"zq-2.{fmt}")) == []  # step 2 is the end: only the final file


def test_resume_continues_the_step_count_and_matches_an_uninterrupted_run(tmp_path, tiny_hosts):
    host = tiny_hosts("tiny-sd1")
    full = train_embedding(config(tmp_path / "a", steps=6, save_every=0), host, Collect())
    part = train_embedding(config(tmp_path / "b", steps=6, save_every=0), host, Collect(stop_at=3))
    assert part.interrupted and part.step == 3
    rest = train_embedding(config(tmp_path / "b", steps=6, save_every=0, resume=True), host, Collect())
    assert rest.step == 6
    # identical up to CPU kernels' float noise (they may differ in the last bits between two identical runs)
    assert part.losses + rest.losses == pytest.approx(full.losses, rel=1e-5)
    a = load_embedding(full.final_path).vectors["*"]
    b = load_embedding(rest.final_path).vectors["*"]
    assert torch.allclose(a, b, atol=1e-3)
    start = init_vectors(host, "*", 1)["clip_l"]
    assert (a - b).abs().max() < 0.05 * (a - start).abs().max()
    assert load_embedding(rest.final_path).step == 6
    state = latest_state(tmp_path / "b" / "run")
    assert state["optimizer"]["state"][0]["step"] == 6


def test_a_corrupt_image_is_skipped_and_named(tmp_path, tiny_hosts):
    cfg = config(tmp_path, steps=1, save_every=0)
    (tmp_path / "data" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    rep = Collect()
    res = train_embedding(cfg, tiny_hosts("tiny-sd1"), rep)
    assert res.step == 1
    assert any("broken.png" in m and "skipped" in m for m in rep.messages)


def test_a_wrong_width_embedding_is_refused_with_its_name(tmp_path, tiny_hosts):
    sd1, sd2 = tiny_hosts("tiny-sd1"), tiny_hosts("tiny-sd2")
    path = create_embedding(sd1, "narrow", 2, "red", tmp_path)
    with pytest.raises(EmbeddingError, match=r"narrow.*32.*64|narrow.*64.*32"):
        load_for_host(path, sd2)


def test_existing_name_is_refused_unless_overwrite(tmp_path, tiny_hosts):
    host = tiny_hosts("tiny-sd1")
    create_embedding(host, "taken", 1, "red", tmp_path)
    with pytest.raises(FileExistsError, match="taken"):
        create_embedding(host, "taken", 1, "red", tmp_path)
    create_embedding(host, "taken", 3, "red", tmp_path, overwrite=True)
    assert load_embedding(tmp_path / "taken.safetensors").num_vectors == 3
    with pytest.raises(FileExistsError, match="overwrite"):
        train_embedding(config(tmp_path, name="taken", out=str(tmp_path)), host, Collect())


def test_init_text_is_spread_over_the_vectors_like_the_webui(tiny_hosts):
    host = tiny_hosts("tiny-sdxl")
    tokens = host.token_vectors("red green blue")
    vec = init_vectors(host, "red green blue", 6)
    for key in ("clip_l", "clip_g"):
        assert vec[key].shape == (6, host.widths[key])
        for i in range(6):
            assert torch.equal(vec[key][i], tokens[key][i * 3 // 6])
    assert torch.count_nonzero(init_vectors(host, "", 2)["clip_l"]) == 0


def test_a_template_without_name_is_refused(tmp_path, tiny_hosts):
    with pytest.raises(ValueError, match=r"\[name\]"):
        train_embedding(config(tmp_path, template="none"), tiny_hosts("tiny-sd1"), Collect())


def test_bad_options_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="vectors"):
        config(tmp_path, vectors=0)
    with pytest.raises(ValueError, match="precision"):
        config(tmp_path, precision="fp8")
    with pytest.raises(ValueError, match="lr"):
        config(tmp_path, lr="fast")
    with pytest.raises(ValueError, match="name"):
        config(tmp_path, name="two words")


def test_memory_savers_change_nothing_but_memory(tmp_path, tiny_hosts):
    host = tiny_hosts("tiny-sd2")
    plain = train_embedding(config(tmp_path / "a", "tiny-sd2", steps=3, save_every=0), host, Collect())
    saver = train_embedding(config(tmp_path / "b", "tiny-sd2", steps=3, save_every=0, gradient_checkpointing=True,
                                   memory_mode="medvram"), host, Collect())
    assert saver.losses == pytest.approx(plain.losses, rel=1e-4)
    assert not host.components.unet.is_gradient_checkpointing  # switched off again after the run


def test_validation_loss_is_deterministic_across_runs(tmp_path, tiny_hosts):
    host = tiny_hosts("tiny-sd1")
    runs = []
    for name in ("a", "b"):
        rep = Collect()
        train_embedding(config(tmp_path / name, steps=4, save_every=0, validation_images=1, validation_every=2), host,
                        rep)
        rows = (tmp_path / name / "run" / "loss.csv").read_text().strip().splitlines()[1:]
        runs.append([r.split(",")[-1] for r in rows])
        assert any("validation loss on 1 held-out image" in m for m in rep.messages)
    assert runs[0][1] and runs[0][3] and not runs[0][0]  # steps 2 and 4
    # fixed timesteps, noises and seed: the same up to CPU kernels' float noise in the trained vectors
    assert [float(v) for v in runs[0] if v] == pytest.approx([float(v) for v in runs[1] if v], rel=1e-4)


def test_holding_out_every_image_is_refused(tmp_path, tiny_hosts):
    with pytest.raises(ValueError, match="validation_images"):
        train_embedding(config(tmp_path, validation_images=4), tiny_hosts("tiny-sd1"), Collect())


def test_previews_are_a_fixed_seed_grid_of_the_users_prompts(tmp_path, tiny_hosts):
    from PIL import Image

    host = tiny_hosts("tiny-sd1")
    cfg = config(tmp_path, steps=2, save_every=0, preview_every=2, preview_steps=2, resolution=64,
                 preview_prompt="a zq | zq on a white background | a red circle")
    train_embedding(cfg, host, Collect())
    grid = Image.open(tmp_path / "run" / "images" / "zq-2.png")
    assert grid.size == (3 * 64, 64)
    # image i of a batch gets seed + i, as in the WebUI: the same picture as when sampled alone
    again = host.sample(["a red circle"], steps=2, cfg_scale=cfg.preview_cfg, seed=cfg.seed + 2, width=64, height=64)[0]
    diff = max(abs(a - b) for pa, pb in zip(grid.crop((128, 0, 192, 64)).getdata(), again.getdata())
               for a, b in zip(pa, pb))
    assert diff <= 2  # batch vs single CPU kernels may differ in the last bits


def test_name_in_a_preview_prompt_is_the_trained_name(tmp_path, tiny_hosts, monkeypatch):
    """``[name]`` in --preview-prompt is the embedding's name (the page's demo previews 'a large [name] star on a
    white background' whatever the name field says)."""
    host = tiny_hosts("tiny-sd1")
    asked = []
    real = host.sample
    monkeypatch.setattr(host, "sample", lambda prompts, **kw: asked.append(list(prompts)) or real(prompts, **kw))
    cfg = config(tmp_path, steps=2, save_every=0, preview_every=2, preview_steps=1, resolution=64,
                 preview_prompt="a large [name] star on a white background|[name]")
    train_embedding(cfg, host, Collect())
    assert asked == [["a large zq star on a white background", "zq"]]
