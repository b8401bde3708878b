"""`scal-sdt inspect`: files written the WebUI's way (its own writers' dicts and torch.save), kohya's and LyCORIS'
layouts, ours, a renamed file, files of other families, and a pickle that must never run."""
import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from scal_sdt.cli import main
from scal_sdt.library.identify import inspect_file, summary
from scal_sdt.library.webui_safe import webui_safe


def webui_embedding(path, width=768, vectors=2, legacy=True):
    """As the WebUI's Embedding.save writes it (textual_inversion.py)."""
    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": torch.randn(vectors, width)},
            "name": "mine", "step": 1500, "sd_checkpoint": "abcd1234", "sd_checkpoint_name": "v1-5-pruned"}
    torch.save(data, str(path), _use_new_zipfile_serialization=not legacy)
    return path


def as_torch_2_1(src, dst):
    """``src`` (a zip .pt of this torch) with only the records torch 2.1-2.5 wrote: version, data.pkl, data/N,
    byteorder and .data/serialization_id."""
    import zipfile

    keep = ("data.pkl", "version", "byteorder", ".data/serialization_id")
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out:
        for name in z.namelist():
            tail = name.split("/", 1)[1]
            if tail in keep or tail.startswith("data/"):
                out.writestr(dst.stem + "/" + tail, z.read(name))
    return dst


def webui_hypernetwork(path, widths=(768, 320, 640, 1280), structure=(1, 0.1, 1)):
    """As the WebUI's Hypernetwork.save writes it: per width a (k, v) pair of linear-stack state dicts."""
    def stack(w):
        sizes = [int(w * s) for s in structure]
        sd = {}
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            sd[f"linear.{i * 2}.weight"], sd[f"linear.{i * 2}.bias"] = torch.randn(b, a), torch.zeros(b)
        return sd
    data = {w: (stack(w), stack(w)) for w in widths}
    data.update({"step": 300, "name": "style", "layer_structure": list(structure), "activation_func": "relu",
                 "is_layer_norm": False, "weight_initialization": "Normal", "sd_checkpoint": "abcd1234",
                 "sd_checkpoint_name": "v1-5-pruned", "activate_output": False, "use_dropout": True,
                 "dropout_structure": [0, 0.3, 0], "last_layer_dropout": False, "optional_info": None})
    torch.save(data, str(path), _use_new_zipfile_serialization=False)
    return path


def kohya_lora(context=768, te="lora_te_", te_width=768, rank=4, alpha=2.0, kind="lora"):
    """Keys as kohya's networks/lora.py (and LyCORIS' LoHa) name them."""
    sd = {}
    unet = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"
    te_key = f"{te}text_model_encoder_layers_0_self_attn_q_proj"
    for key, fan_in, fan_out in ((unet, context, 320), (te_key, te_width, te_width)):
        if kind == "loha":
            sd.update({f"{key}.hada_w1_a": torch.randn(fan_out, rank), f"{key}.hada_w1_b": torch.randn(rank, fan_in),
                       f"{key}.hada_w2_a": torch.randn(fan_out, rank), f"{key}.hada_w2_b": torch.randn(rank, fan_in)})
        else:
            sd[f"{key}.lora_down.weight"] = torch.randn(rank, fan_in).half()
            sd[f"{key}.lora_up.weight"] = torch.zeros(fan_out, rank).half()
        sd[f"{key}.alpha"] = torch.tensor(alpha)
    return sd


def fake_checkpoint(family):
    """The keys and shapes that tell the families apart (a whole model is not needed to tell)."""
    u = "model.diffusion_model."
    sd = {u + "input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3, dtype=torch.float16),
          u + "out.2.weight": torch.zeros(4, 8, 3, 3, dtype=torch.float16),
          "first_stage_model.decoder.conv_in.weight": torch.zeros(8, 4, 3, 3, dtype=torch.float16)}
    text = {"sd1": ["cond_stage_model.transformer.text_model.final_layer_norm.weight"],
            "sd2": ["cond_stage_model.model.ln_final.weight"],
            "sdxl": ["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
                     "conditioner.embedders.1.model.ln_final.weight"]}[family]
    sd.update({k: torch.zeros(8, dtype=torch.float16) for k in text})
    return sd


def test_webui_embeddings_by_family_and_both_torch_formats(tmp_path):
    legacy = inspect_file(webui_embedding(tmp_path / "a.pt"))
    assert (legacy["kind"], legacy["family"]) == ("embedding", "sd1")
    assert legacy["details"]["vectors"] == 2 and legacy["details"]["widths"] == {"*": 768}
    assert legacy["metadata"]["step"] == 1500 and legacy["metadata"]["sd_checkpoint_name"] == "v1-5-pruned"
    assert legacy["webui_safe"]["loads"] is True

    modern = inspect_file(webui_embedding(tmp_path / "b.pt", legacy=False))  # this torch's zip format
    assert modern["kind"] == "embedding" and modern["webui_safe"]["loads"] is False
    torch21 = inspect_file(as_torch_2_1(tmp_path / "b.pt", tmp_path / "c.pt"))  # the WebUI v1.8 on torch 2.1
    assert torch21["kind"] == "embedding"
    assert torch21["webui_safe"]["loads"] is False and torch21["webui_safe"]["later_loads"] is True
    assert "byteorder" in torch21["webui_safe"]["reason"]

    sd2 = inspect_file(webui_embedding(tmp_path / "e.pt", width=1024, vectors=1))
    assert (sd2["kind"], sd2["family"]) == ("embedding", "sd2")
    save_file({"clip_l": torch.randn(3, 768), "clip_g": torch.randn(3, 1280)}, str(tmp_path / "x.safetensors"))
    xl = inspect_file(tmp_path / "x.safetensors")
    assert (xl["kind"], xl["family"], xl["details"]["vectors"]) == ("embedding", "sdxl", 3)
    odd = inspect_file(webui_embedding(tmp_path / "d.pt", width=32))  # a tiny test model's width
    assert (odd["kind"], odd["family"]) == ("embedding", "unknown")


def test_our_embedding_formats(tmp_path):
    from scal_sdt.textual_inversion.format import Embedding, save_embedding

    emb = Embedding("ours", {"*": torch.randn(4, 768)}, step=20, meta={"trainer": "scal-sdt"})
    for fmt in ("safetensors", "pt", "png"):
        info = inspect_file(save_embedding(emb, tmp_path / f"ours.{fmt}", fmt))
        assert (info["kind"], info["family"], info["details"]["vectors"]) == ("embedding", "sd1", 4), fmt
        assert info["metadata"]["step"] == 20 and info["metadata"]["trainer"] == "scal-sdt"
    assert inspect_file(tmp_path / "ours.pt")["webui_safe"]["loads"] is True


def test_webui_hypernetworks_and_a_renamed_one(tmp_path):
    hn = inspect_file(webui_hypernetwork(tmp_path / "style.pt"))
    assert (hn["kind"], hn["family"]) == ("hypernetwork", "sd1")
    d = hn["details"]
    assert d["widths"] == [320, 640, 768, 1280] and d["layer_structure"] == [1, 0.1, 1]
    assert d["activation"] == "relu" and d["dropout"] is True and d["linear_layers"] == 2
    assert hn["metadata"]["step"] == 300 and hn["webui_safe"]["loads"] is True
    # named like an embedding, in another family: the contents decide
    renamed = inspect_file(webui_hypernetwork(tmp_path / "my_embedding.pt", widths=(1024, 320, 640, 1280)))
    assert (renamed["kind"], renamed["family"]) == ("hypernetwork", "sd2")
    assert "hypernetwork, sd2" in summary(renamed)


def test_kohya_loras_lycoris_and_families(tmp_path):
    save_file(kohya_lora(), str(tmp_path / "plain.safetensors"),
              metadata={"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1", "ss_steps": "800",
                        "ss_tag_frequency": json.dumps({"5_cat": {"cat": 5, "sofa": 2}})})
    lora = inspect_file(tmp_path / "plain.safetensors")
    assert (lora["kind"], lora["family"]) == ("lora", "sd1")
    assert lora["details"]["type"] == "lora" and lora["details"]["rank"] == 4 and lora["details"]["alpha"] == 2.0
    assert lora["details"]["targets"] == {"unet attention": 1, "text encoder attention": 1}
    assert lora["details"]["precision"] == "f16" and lora["metadata"]["top_tags"][0] == "cat"
    # no metadata: the family from the shapes and key names
    save_file(kohya_lora(context=1024, te_width=1024), str(tmp_path / "sd2.safetensors"))
    assert inspect_file(tmp_path / "sd2.safetensors")["family"] == "sd2"
    save_file(kohya_lora(context=2048, te="lora_te1_"), str(tmp_path / "xl.safetensors"))
    assert inspect_file(tmp_path / "xl.safetensors")["family"] == "sdxl"
    save_file(kohya_lora(kind="loha", rank=8), str(tmp_path / "loha.safetensors"))
    loha = inspect_file(tmp_path / "loha.safetensors")
    assert (loha["kind"], loha["details"]["type"], loha["details"]["rank"]) == ("lycoris", "loha", 8)
    # a LoRA saved as a .pt (renamed): still a LoRA, and safe.py's verdict on it
    torch.save(kohya_lora(), str(tmp_path / "renamed.pt"), _use_new_zipfile_serialization=False)
    renamed = inspect_file(tmp_path / "renamed.pt")
    assert (renamed["kind"], renamed["family"], renamed["webui_safe"]["loads"]) == ("lora", "sd1", True)


def test_a_diffusers_peft_lora(tmp_path):
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    save_file({f"{key}.lora_A.weight": torch.randn(8, 1024), f"{key}.lora_B.weight": torch.zeros(320, 8),
               "unet.down_blocks.0.resnets.0.conv1.lora_A.weight": torch.randn(8, 320, 3, 3),
               "unet.down_blocks.0.resnets.0.conv1.lora_B.weight": torch.zeros(320, 8, 1, 1)},
              str(tmp_path / "peft.safetensors"))
    info = inspect_file(tmp_path / "peft.safetensors")
    assert (info["kind"], info["family"], info["details"]["type"]) == ("lora", "sd2", "locon")
    assert info["details"]["modules"] == 2 and info["details"]["targets"] == {"unet attention": 1, "unet conv": 1}


def test_our_lora_writer(tmp_path):
    from scal_sdt.lora.metadata import BASE_MODEL_VERSION, NETWORK_MODULE

    meta = {"ss_network_module": NETWORK_MODULE["lokr"], "ss_base_model_version": BASE_MODEL_VERSION["sdxl"]}
    save_file({"lora_unet_a_b.lokr_w1": torch.randn(4, 4), "lora_unet_a_b.lokr_w2_a": torch.randn(8, 2),
               "lora_unet_a_b.lokr_w2_b": torch.randn(2, 8), "lora_unet_a_b.alpha": torch.tensor(2.0)},
              str(tmp_path / "k.safetensors"), metadata=meta)
    info = inspect_file(tmp_path / "k.safetensors")
    assert (info["kind"], info["family"], info["details"]["type"]) == ("lycoris", "sdxl", "lokr")


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_checkpoints(tmp_path, family):
    meta = {"modelspec.prediction_type": "v"} if family == "sd2" else None
    save_file(fake_checkpoint(family), str(tmp_path / "m.safetensors"), metadata=meta)
    info = inspect_file(tmp_path / "m.safetensors")
    assert (info["kind"], info["family"], info["details"]["precision"]) == ("checkpoint", family, "f16")
    want = "v_prediction" if family == "sd2" else "epsilon"
    assert info["details"]["prediction_type"] == want and info["details"]["parts"]["vae"]
    ckpt = tmp_path / "m.ckpt"  # the original .ckpt layout: a state_dict inside, from torch.save
    torch.save({"state_dict": fake_checkpoint(family), "global_step": 1}, str(ckpt))
    info = inspect_file(ckpt)
    assert (info["kind"], info["family"]) == ("checkpoint", family)


def test_aesthetic_embeddings(tmp_path):
    torch.save(torch.randn(1, 768), str(tmp_path / "artist.pt"), _use_new_zipfile_serialization=False)
    info = inspect_file(tmp_path / "artist.pt")  # the aesthetic-gradients extension's file
    assert (info["kind"], info["family"]) == ("aesthetic-embedding", "sd1")
    assert info["details"]["encoders"] == {"clip_l": "ViT-L-14/openai"}
    from scal_sdt.files import save_safetensors

    save_safetensors({"clip_l": torch.randn(1, 768), "clip_l.text_projection": torch.randn(768, 768),
                      "clip_g": torch.randn(1, 1280)}, tmp_path / "ours.safetensors",
                     metadata={"trainer": "scal-sdt aesthetic embedding", "images": "12",
                               "encoders": json.dumps({"clip_l": "ViT-L-14/openai", "clip_g": "ViT-bigG-14"})})
    ours = inspect_file(tmp_path / "ours.safetensors")  # not an SDXL embedding with one vector
    assert (ours["kind"], ours["family"]) == ("aesthetic-embedding", "sdxl")
    assert ours["metadata"]["images"] == "12" and ours["details"]["text_projection"] == ["clip_l"]


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_a_malicious_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"string_to_param": Payload(str(marker))}, protocol=2))
    info = inspect_file(evil)
    assert info["kind"] == "unknown" and not marker.exists()
    assert info["webui_safe"]["loads"] is False and "forbidden" in info["webui_safe"]["reason"]
    for protocol in (4, 5):  # STACK_GLOBAL names its global through pushed strings
        evil.write_bytes(pickle.dumps([Payload(str(marker))], protocol=protocol))
        assert "forbidden" in webui_safe(evil).reason and not marker.exists()
    (tmp_path / "notes.pt").write_text("not a model")
    junk = inspect_file(tmp_path / "notes.pt")
    assert junk["kind"] == "unknown" and junk["webui_safe"]["loads"] is False and junk["why"]


def test_cli_text_and_json(tmp_path, capsys):
    a = webui_embedding(tmp_path / "a.pt")
    b = webui_hypernetwork(tmp_path / "b.pt")
    assert main(["inspect", str(a), str(b), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x["kind"] for x in lines] == ["embedding", "hypernetwork"]
    assert main(["inspect", str(a), str(tmp_path / "missing.pt")]) == 0
    out = capsys.readouterr().out
    assert "embedding, sd1; 2 vectors, width 768; step 1500" in out and "missing.pt: unknown" in out
