"""The shipped toy model inside the REAL WebUI: saved by our ``save_checkpoint`` (with its yaml and text-encoder
folder), loaded by the WebUI, and its txt2img draws what the prompt asks for, as judged by the toy world's judge —
the same measure as the standalone quality test, so the WebUI and our own sampler agree on what the model is."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from scal_sdt.toy_world.build import JUDGE, PRETRAINED
from scal_sdt.toy_world.judge import Judge
from scal_sdt.toy_world.quality import prompt_set, sentence


@pytest.fixture(scope="module")
def toy_webui(webui_server, tiny_checkpoint):
    return webui_server(tiny_checkpoint("toy"), name="webui-toy")


def test_webui_txt2img_on_the_toy_model_draws_the_prompt(toy_webui):
    judge = Judge.load(PRETRAINED / JUDGE)
    triples = prompt_set(24, seed=31337)
    images = []
    for i, (shape, colour, background) in enumerate(triples):
        pngs, info = toy_webui.txt2img(prompt=sentence(shape, colour, background), steps=20, sampler_name="DDIM",
                                       cfg_scale=5, seed=100 + i)
        assert "toy" in info["infotexts"][0]
        images.append(Image.open(io.BytesIO(pngs[0])).convert("RGB"))
    said = judge.predict(images)
    colour = sum(p[1] == t[1] for p, t in zip(said, triples)) / len(triples)
    # as our own sampler (0.93; chance 1/12). Shapes: 4 of these 24 (DDIM; our sampler 0.29 of 96), too few to
    # assert a level on
    assert colour >= 0.7, (colour, said)
