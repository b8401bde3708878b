"""Bench-only launcher (not part of SCAL-SDT; run with sd-scripts' own python): kohya-ss/sd-scripts'
``train_network.py`` or ``train_textual_inversion.py``, unmodified, on an SD1-layout single-file checkpoint whose
widths are not SD1's (the toy world's model).

    KOHYA_PYTHON kohya_sd1_sizes.py SD_SCRIPTS_DIR train_network.py --pretrained_model_name_or_path FILE ...
    KOHYA_PYTHON kohya_sd1_sizes.py SD_SCRIPTS_DIR --outputs FILE OUT.safetensors   # what its models compute

sd-scripts reads a single-file SD1 checkpoint by building its UNet (``library/original_unet.py``), VAE and CLIP text
encoder at SD1's sizes from constants, then loading the file's tensors into them. This launcher reads the sizes the
file's tensors have, lends them to those constants, and then runs the script's own ``if __name__ == "__main__":``
block with the arguments given (what ``python train_network.py ARGS`` runs). What it lends, and nothing else:

- ``library.model_util``: ``UNET_PARAMS_MODEL_CHANNELS``, ``_CHANNEL_MULT``, ``_NUM_RES_BLOCKS``, ``_CONTEXT_DIM``,
  ``_NUM_HEADS``; ``VAE_PARAMS_CH``, ``_CH_MULT``, ``_NUM_RES_BLOCKS``, ``_Z_CHANNELS``; and the ``CLIPTextConfig`` it
  builds for SD1's text encoder gets the file's width, depth, MLP width and heads (every other field as it wrote it);
- ``library.original_unet``: ``BLOCK_OUT_CHANNELS``, ``TIMESTEP_INPUT_DIM``, ``TIME_EMBED_DIM``, ``LAYERS_PER_BLOCK``,
  ``LAYERS_PER_BLOCK_UP`` (read when a UNet is built, so setting them before the load is enough);
- the trainer's ``vae_scale_factor`` (SD's 0.18215, set in its ``__init__``) becomes the file's own.

With $STEP_CLOCK set, ``step_clock`` stamps the time of every optimiser step into that file (a global torch hook;
the trainer is not touched). On a full-size SD1 file the sizes read are SD1's own, so nothing changes but the clock.

Attention heads (UNet and text encoder) and the VAE's scale factor cannot be read off tensor shapes: they come from
the ``scal_sdt.architecture`` metadata our ``save_checkpoint`` writes, else SD1's (8 UNet heads, 64-wide text heads,
0.18215). A file whose layout differs from SD1's in more than widths and ResBlocks per level (other attention levels,
a time embedding not 4x the first width) is refused with the reason: original_unet's block types are fixed.
"""
from __future__ import annotations

import ast
import importlib
import json
import os
import re
import sys


def read_sizes(path: str) -> dict:
    """SD1's size parameters as this file's tensors have them."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        keys = list(f.keys())
        meta = f.metadata() or {}

        def shape(key: str) -> tuple:
            return tuple(f.get_slice(key).get_shape())

        def indices(pattern: str) -> list[int]:
            return sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})

        unet, vae, text = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."
        arch = json.loads(meta.get("scal_sdt.architecture", "{}"))
        channels = shape(unet + "input_blocks.0.0.weight")[0]
        blocks = indices(re.escape(unet) + r"input_blocks\.(\d+)\.")
        downsamplers = [i for i in blocks if unet + f"input_blocks.{i}.0.op.weight" in keys]
        levels = len(downsamplers) + 1
        res_blocks = (len(blocks) - 1 - len(downsamplers)) // levels
        firsts = [1 + level * (res_blocks + 1) for level in range(levels)]
        mult = [shape(unet + f"input_blocks.{i}.0.out_layers.3.weight")[0] // channels for i in firsts]
        attention = [2 ** level for level, i in enumerate(firsts)
                     if unet + f"input_blocks.{i}.1.proj_in.weight" in keys]
        time_dim = shape(unet + "time_embed.0.weight")[0]
        if levels != 4 or attention != [1, 2, 4] or time_dim != 4 * channels:
            raise SystemExit(f"{path}: not SD1's UNet layout at other widths ({levels} levels, attention at "
                             f"{attention}, time embedding {time_dim} for {channels} channels): original_unet's block "
                             "types are SD1's")
        vae_ch = shape(vae + "encoder.conv_in.weight")[0]
        vae_levels = indices(re.escape(vae) + r"encoder\.down\.(\d+)\.")
        text_cfg = (arch.get("text_configs") or [{}])[0]
        width = shape(text + "embeddings.token_embedding.weight")[1]
        return {
            "unet": dict(channels=channels, mult=mult, res_blocks=res_blocks, attention=attention,
                         context=shape(unet + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")[1],
                         heads=arch.get("unet_config", {}).get("attention_head_dim", 8)),
            "vae": dict(ch=vae_ch, mult=[shape(vae + f"encoder.down.{i}.block.0.conv2.weight")[0] // vae_ch
                                         for i in vae_levels],
                        res_blocks=len(indices(re.escape(vae) + r"encoder\.down\.0\.block\.(\d+)\.")),
                        z=shape(vae + "encoder.conv_out.weight")[0] // 2,
                        scale=arch.get("vae_config", {}).get("scaling_factor", 0.18215)),
            "text": dict(hidden_size=width,
                         num_hidden_layers=len(indices(re.escape(text) + r"encoder\.layers\.(\d+)\.")),
                         intermediate_size=shape(text + "encoder.layers.0.mlp.fc1.weight")[0],
                         num_attention_heads=text_cfg.get("num_attention_heads", width // 64),
                         projection_dim=text_cfg.get("projection_dim", width)),
        }


def lend(sizes: dict, trainer_class) -> None:
    """Set sd-scripts' SD1 size constants, the text encoder's config and the trainer's VAE scale to ``sizes``."""
    from library import model_util, original_unet

    u, v = sizes["unet"], sizes["vae"]
    model_util.UNET_PARAMS_MODEL_CHANNELS = u["channels"]
    model_util.UNET_PARAMS_CHANNEL_MULT = u["mult"]
    model_util.UNET_PARAMS_NUM_RES_BLOCKS = u["res_blocks"]
    model_util.UNET_PARAMS_CONTEXT_DIM = u["context"]
    model_util.UNET_PARAMS_NUM_HEADS = u["heads"]
    model_util.VAE_PARAMS_CH = v["ch"]
    model_util.VAE_PARAMS_CH_MULT = v["mult"]
    model_util.VAE_PARAMS_NUM_RES_BLOCKS = v["res_blocks"]
    model_util.VAE_PARAMS_Z_CHANNELS = v["z"]
    original_unet.BLOCK_OUT_CHANNELS = tuple(u["channels"] * m for m in u["mult"])
    original_unet.TIMESTEP_INPUT_DIM = u["channels"]
    original_unet.TIME_EMBED_DIM = 4 * u["channels"]
    original_unet.LAYERS_PER_BLOCK = u["res_blocks"]
    original_unet.LAYERS_PER_BLOCK_UP = u["res_blocks"] + 1

    sd1_config = model_util.CLIPTextConfig

    def text_config(**fields):  # what load_models_from_stable_diffusion_checkpoint asks for, at the file's sizes
        return sd1_config(**dict(fields, **sizes["text"]))

    model_util.CLIPTextConfig = text_config
    if trainer_class is None:
        return
    own_init = trainer_class.__init__

    def init(self, *args, **kwargs):
        own_init(self, *args, **kwargs)
        self.vae_scale_factor = v["scale"]

    trainer_class.__init__ = init


def run_script_main(module) -> None:
    """Run ``module``'s ``if __name__ == "__main__":`` block in the module's namespace, as ``python script.py``."""
    tree = ast.parse(open(module.__file__, encoding="utf-8").read())
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test).replace("'", '"') == '__name__ == "__main__"':
            exec(compile(ast.Module(body=node.body, type_ignores=[]), module.__file__, "exec"), module.__dict__)
            return
    raise SystemExit(f"{module.__file__} has no __main__ block")


TRAINERS = {"train_network.py": "NetworkTrainer", "train_textual_inversion.py": "TextualInversionTrainer"}


def write_outputs(ckpt: str, out: str) -> None:
    """Load ``ckpt`` the way the trainers do (sd-scripts' ``load_models_from_stable_diffusion_checkpoint`` with the
    sizes lent) and save what its text encoder, UNet and VAE encoder compute on fixed inputs (:func:`fixed_inputs`),
    for ``bench/kohya.py --check-load`` to hold against our host's models."""
    import torch
    from safetensors.torch import save_file

    from library import model_util

    text_encoder, vae, unet = model_util.load_models_from_stable_diffusion_checkpoint(False, ckpt)
    ids, x, t, image = fixed_inputs(torch)
    with torch.no_grad():
        context = text_encoder(ids).last_hidden_state
        eps = unet(x, t, context).sample
        latent = vae.encode(image).latent_dist.mean
    save_file({"context": context.contiguous(), "eps": eps.contiguous(), "latent": latent.contiguous()}, out)


def fixed_inputs(torch):
    """Fixed token ids (BOS, eight word ids, EOS, EOS-padded to 77), a timestep, and a latent and a 64 px picture
    drawn from seed 0."""
    words = [49406, 320, 3638, 736, 2365, 525, 320, 1579, 5994, 49407]
    ids = torch.tensor([words + [49407] * (77 - len(words))])
    gen = torch.Generator().manual_seed(0)
    return ids, torch.randn(1, 4, 8, 8, generator=gen), torch.tensor([500]), \
        torch.rand(1, 3, 64, 64, generator=gen) * 2 - 1


def main() -> None:
    sd_scripts, script, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if script == "--outputs":
        sys.path.insert(0, sd_scripts)
        lend(read_sizes(args[0]), None)
        write_outputs(*args)
        return
    if script not in TRAINERS:
        raise SystemExit(f"{script}: one of {', '.join(TRAINERS)}")
    ckpt = args[args.index("--pretrained_model_name_or_path") + 1]
    sizes = read_sizes(ckpt)
    print(f"[kohya_sd1_sizes] {os.path.basename(ckpt)}: {json.dumps(sizes)}", flush=True)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import step_clock

    step_clock.install_from_env()
    sys.path.insert(0, sd_scripts)
    os.chdir(sd_scripts)
    module = importlib.import_module(script[:-3])
    lend(sizes, getattr(module, TRAINERS[script]))
    sys.argv = [os.path.join(sd_scripts, script), *args]
    run_script_main(module)


if __name__ == "__main__":
    main()
