"""API bodies become configs: JSON numbers where text is expected, numeric text where numbers are; wrong types are
a ValueError naming the field (the API's 422), never an AttributeError deep inside (a 500)."""
from __future__ import annotations

import pytest

from scal_sdt.config import from_dict
from scal_sdt.hypernetwork.config import HypernetworkConfig
from scal_sdt.textual_inversion.config import EmbeddingConfig


def test_a_number_for_a_text_field_is_its_text():
    cfg = from_dict(HypernetworkConfig, {"name": "h", "data": "d", "lr": 0.005, "steps": 4})
    assert cfg.lr == "0.005" and cfg.steps == 4
    assert from_dict(EmbeddingConfig, {"name": "e", "data": "d", "lr": 5e-06}).lr == "5e-06"
    assert from_dict(HypernetworkConfig, {"name": "h", "data": "d", "lr": 1}).lr == "1"


def test_numbers_as_text_and_whole_floats_are_accepted():
    cfg = from_dict(EmbeddingConfig, {"name": "e", "data": "d", "steps": "12", "batch_size": 2.0, "seed": 2**62})
    assert (cfg.steps, cfg.batch_size, cfg.seed) == (12, 2, 2**62)
    assert isinstance(cfg.steps, int)


@pytest.mark.parametrize("body, reason", [
    ({"lr": [0.005]}, "lr must be text"),
    ({"lr": True}, "lr must be text"),
    ({"steps": 2.5}, "steps must be a whole number"),
    ({"steps": "many"}, "steps must be a whole number"),
    ({"steps": True}, "steps must be a whole number"),
    ({"overwrite": "yes"}, "overwrite must be true or false"),
    ({"nonsense": 1}, "unknown option"),
])
def test_wrong_types_are_a_value_error_naming_the_field(body, reason):
    with pytest.raises(ValueError, match=reason):
        from_dict(HypernetworkConfig, {"name": "h", "data": "d", **body})


def test_a_body_that_is_not_an_object_is_a_value_error():
    with pytest.raises(ValueError, match="JSON object"):
        from_dict(HypernetworkConfig, [1, 2])
