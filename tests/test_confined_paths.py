"""Paths from the HTTP API never write outside the WebUI's folders (files.check_confined, used by every API route
that starts a job)."""
import dataclasses
import os

import pytest

from scal_sdt.files import check_confined
from scal_sdt.textual_inversion.config import EmbeddingConfig


def cfg(root, **kw):
    """An embedding run whose written folders are all inside ``root`` but for ``kw``."""
    inside = dict(out=str(root / "e"), log_dir=str(root / "l"), lora_out=str(root / "m"))
    return dataclasses.replace(EmbeddingConfig(name="x", data="d"), **{**inside, **kw})


def test_inside_is_accepted(tmp_path):
    root = tmp_path / "webui"
    check_confined(cfg(root, out=str(root / "embeddings"), log_dir=str(root / "textual_inversion" / "x")), [root])


@pytest.mark.parametrize("field,value", [("out", "/etc"), ("out", "{root}/../elsewhere"),
                                         ("log_dir", "{root}/embeddings/../../x"), ("lora_out", "/tmp/x")])
def test_outside_is_refused_by_field(tmp_path, field, value):
    root = tmp_path / "webui"
    value = value.format(root=root)
    with pytest.raises(ValueError, match=f"^{field}: .* outside the WebUI's folders"):
        check_confined(cfg(root, **{field: value}), [root])


def test_a_link_out_of_the_folder_is_refused(tmp_path):
    root = tmp_path / "webui"
    root.mkdir()
    os.symlink(tmp_path / "outside", root / "escape")
    with pytest.raises(ValueError, match="^out: "):
        check_confined(cfg(root, out=str(root / "escape" / "e")), [root])


def test_a_nul_byte_is_refused(tmp_path):
    with pytest.raises(ValueError, match="^data: a NUL byte"):
        check_confined(cfg(tmp_path, data="d\x00"), [tmp_path])
