"""The SCAL-SDT Library tab in the WebUI: its folders, its loaded model, and "use" into txt2img's prompt or the
Settings' hypernetwork."""
from __future__ import annotations

import contextlib
from pathlib import Path

from modules import call_queue, shared  # noqa: the WebUI

from ..library.catalogue import Item
from ..ui.library_tab import LibraryView, add_to_prompt, prompt_token
from .adapter import WebUIHost, lora_dir
from .aesthetic import aesthetic_dir
from .service import checkpoints_dir, embeddings_dir, hypernetworks_dir, is_forge


def library_folders() -> list[str]:
    """The WebUI's embeddings, hypernetworks, Lora, checkpoints and aesthetic-embeddings folders that exist."""
    return [f for f in (embeddings_dir(), hypernetworks_dir(), lora_dir(), checkpoints_dir(), aesthetic_dir())
            if f and Path(f).is_dir()]


def library_host():
    """The loaded model (Forge's gives no view we can sample with: no fit, no previews there)."""
    return None if is_forge() else WebUIHost()


@contextlib.contextmanager
def swapped_to(path: Path):
    """The WebUI's model switched to the checkpoint file ``path`` for a checkpoint's preview, and the one loaded before
    loaded back afterwards."""
    from modules import sd_models

    from .adapter import checkpoint_loaded, reload_checkpoints

    reload_checkpoints()  # a file put there after start-up
    info = next((i for i in sd_models.checkpoints_list.values()
                 if Path(i.filename).resolve() == Path(path).resolve()), None)
    if info is None:
        raise ValueError(f"{Path(path).name} is not in the WebUI's checkpoint list ({checkpoints_dir()}): "
                         "only those can be loaded for a preview")
    with checkpoint_loaded(info.title):
        yield WebUIHost()


class WebUILibrary(LibraryView):
    def __init__(self):
        super().__init__(library_folders, library_host, swapped_to)

    def render(self, file, cfg):
        with call_queue.queue_lock:  # one generation at a time, as the WebUI's own buttons
            return super().render(file, cfg)


def use_in_txt2img(item: Item, prompt: str) -> tuple[str, str]:
    """An embedding's name or ``<lora:NAME:1>`` into the txt2img prompt; a hypernetwork into Settings → SCAL-SDT
    (applied to every generation); the others are refused with what to do instead."""
    if item.kind in ("embedding", "lora", "lycoris"):
        return add_to_prompt(prompt, prompt_token(item)), f"{prompt_token(item)} added to the txt2img prompt"
    if item.kind == "hypernetwork":
        if item.name not in shared.hypernetworks:
            shared.reload_hypernetworks()
        if item.name not in shared.hypernetworks:
            raise ValueError(f"{item.name} is not in the WebUI's hypernetworks folder ({hypernetworks_dir()})")
        shared.opts.set("scal_sdt_hypernetwork", item.name)
        shared.opts.save(shared.config_filename)
        return prompt, f"Settings → SCAL-SDT: {item.name} is applied to every generation"
    if item.kind == "checkpoint":
        raise ValueError(f"{item.name} is a whole model: pick it in the checkpoint list at the top left")
    raise ValueError(f"{item.name}: pick it in txt2img's aesthetic-gradients accordion" if item.kind ==
                     "aesthetic-embedding" else f"{item.name}: {item.why or 'not a file the WebUI uses'}")


def webui_family() -> str:
    """The loaded model's family, without loading one (the UI is built while the WebUI may still be loading it)."""
    from modules import sd_models

    from .aesthetic import family_name

    model = getattr(getattr(sd_models, "model_data", None), "sd_model", None)
    return family_name(model) if model is not None else "sd1"
