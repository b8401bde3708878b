"""WebUI entry point for using hypernetworks: a Settings section (SCAL-SDT → hypernetwork picker and strength)
whose choice is applied to every txt2img and img2img generation through the WebUI's own ``<hypernet:…>`` extra
network, so the WebUI loads and applies it exactly once, and the infotext records it. On reForge, whose backend no
longer applies the WebUI's loaded hypernetworks, they are put into each generation's UNet as attention patches."""
import os
import sys

_packages = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "extensions_builtin")
if _packages not in sys.path:
    sys.path.insert(0, _packages)

import gradio as gr  # noqa: E402
from modules import script_callbacks, scripts, shared  # noqa: E402

from scal_sdt.hypernetwork.prompt_tag import with_hypernetwork  # noqa: E402
from scal_sdt.webui.hypernetwork_patch import patched_unet  # noqa: E402

SECTION = ("scal_sdt", "SCAL-SDT")


def on_ui_settings():
    shared.opts.add_option("scal_sdt_hypernetwork", shared.OptionInfo(
        "None", "Hypernetwork applied to every generation", gr.Dropdown,
        lambda: {"choices": ["None", *shared.hypernetworks]}, refresh=shared.reload_hypernetworks, section=SECTION))
    shared.opts.add_option("scal_sdt_hypernetwork_strength", shared.OptionInfo(
        1.0, "Hypernetwork strength", gr.Slider, {"minimum": 0.0, "maximum": 2.0, "step": 0.05}, section=SECTION))


class ScalSdtHypernetwork(scripts.Script):
    def title(self):
        return "SCAL-SDT hypernetwork"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        name = getattr(shared.opts, "scal_sdt_hypernetwork", "None")
        if name in (None, "", "None") or getattr(p, "disable_extra_networks", False):
            return
        if name not in shared.hypernetworks:
            print(f"[SCAL-SDT] hypernetwork {name!r} from Settings is not in models/hypernetworks; not applied")
            return
        strength = float(getattr(shared.opts, "scal_sdt_hypernetwork_strength", 1.0))
        p.all_prompts = with_hypernetwork(p.all_prompts, name, strength)
        if getattr(p, "all_hr_prompts", None):
            p.all_hr_prompts = with_hypernetwork(p.all_hr_prompts, name, strength)
        p.extra_generation_params["Hypernet"] = name
        p.extra_generation_params["Hypernet strength"] = strength

    def process_before_every_sampling(self, p, *args, **kwargs):
        """reForge (a Forge-style backend; A1111 never calls this hook): its UNet no longer applies the loaded
        hypernetworks, so this generation's UNet gets them as attention patches (any ``<hypernet:…>``, not only
        ours)."""
        objects = getattr(p.sd_model, "forge_objects", None)
        loaded = list(getattr(shared, "loaded_hypernetworks", None) or [])
        # reForge's model has the WebUI's text encoders; Forge's (none) is not tried with this
        if objects is None or getattr(p.sd_model, "cond_stage_model", None) is None or not loaded:
            return
        unet = patched_unet(objects.unet, loaded)
        if unet is not None:
            objects.unet = unet


script_callbacks.on_ui_settings(on_ui_settings)
