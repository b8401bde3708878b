"""A tiny, deterministic toy world for testing Stable Diffusion personalisation end to end.

``world`` generates 64 px images of simple shapes in named colours, sizes and positions on plain or
textured backgrounds, with captions in both styles users write (sentences and booru-style tags).  Some
concepts (``world.HELD_OUT``) are kept out of every base model's training on purpose, so that
personalisation can be tested on something the model has never seen.

``judge`` is a small CNN trained on the generator's own labels (all concepts, held-out ones included)
that says which shape and colour an image shows: it measures prompt accuracy of generated images.

``build`` is the recipe of the shipped models in ``pretrained/`` (``scal-sdt make-toy-world``): ``clip_model``,
``vae``, ``unet`` (together the SD1 checkpoint ``--model toy``), ``judge`` and ``tagger`` (WD14 format), each
trained on a ``pool`` of rendered scenes; ``quality`` measures prompt accuracy; ``concepts`` makes data sets of the
held-out concepts for personalisation.
"""
from .world import (BACKGROUNDS, COLOURS, HELD_OUT, SHAPES, SIZES, TEXTURES, Scene, caption_sentence,
                    caption_tags, make_dataset, render, sample_scene)

__all__ = ["BACKGROUNDS", "COLOURS", "HELD_OUT", "SHAPES", "SIZES", "TEXTURES", "Scene", "caption_sentence",
           "caption_tags", "make_dataset", "render", "sample_scene"]
