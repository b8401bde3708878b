"""WebUI entry point for aesthetic gradients: an always-visible accordion in txt2img and img2img (embedding picker
with the thumbnail of its images, the paper's parameters, presets, an optional hypernetwork to pair it with),
written into the infotext and read back by "send to". The work is in ``scal_sdt.webui.aesthetic``."""
import os
import sys

_packages = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "extensions_builtin")
if _packages not in sys.path:
    sys.path.insert(0, _packages)

import gradio as gr  # noqa: E402
from modules import script_callbacks, scripts, shared  # noqa: E402
from modules.ui_components import ToolButton  # noqa: E402

from scal_sdt.aesthetic.config import AESTHETIC_PRESETS, DEFAULT_AESTHETIC_PRESET  # noqa: E402
from scal_sdt.aesthetic.gradient import INFOTEXT_KEYS, AestheticSettings  # noqa: E402
from scal_sdt.aesthetic.use import find_embedding, list_embeddings  # noqa: E402
from scal_sdt.hypernetwork.prompt_tag import with_hypernetwork  # noqa: E402
from scal_sdt.webui import aesthetic as webui_aesthetic  # noqa: E402

SECTION = ("scal_sdt", "SCAL-SDT")
NONE = "None"


def on_ui_settings():
    shared.opts.add_option("scal_sdt_aesthetic_clip", shared.OptionInfo(
        "", "CLIP for aesthetic embeddings that store no text projection (a local open_clip folder, or ARCH/PRETRAINED "
            "in the Hugging Face cache; empty = the model family's)", section=SECTION))


def _preview(name):
    path = os.path.join(webui_aesthetic.aesthetic_dir(), f"{name}.preview.png")
    return path if name and name != NONE and os.path.isfile(path) else None


class ScalSdtAesthetic(scripts.Script):
    def title(self):
        return "SCAL-SDT aesthetic gradients"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        names = lambda: [NONE, *list_embeddings(webui_aesthetic.aesthetic_dir())]  # noqa: E731
        weight0, steps0, lr0, slerp0 = AESTHETIC_PRESETS[DEFAULT_AESTHETIC_PRESET]
        with gr.Accordion("SCAL-SDT aesthetic gradients", open=False, elem_id=self.elem_id("accordion")):
            with gr.Row():
                enabled = gr.Checkbox(label="Enable", value=False, elem_id=self.elem_id("enabled"))
                preset = gr.Dropdown(label="Preset", choices=list(AESTHETIC_PRESETS), value=DEFAULT_AESTHETIC_PRESET,
                                     elem_id=self.elem_id("preset"))
            with gr.Row():
                with gr.Column(scale=3):
                    with gr.Row():
                        embedding = gr.Dropdown(label="Aesthetic embedding", choices=names(), value=NONE,
                                                elem_id=self.elem_id("embedding"))
                        refresh = ToolButton(value="\U0001f504", elem_id=self.elem_id("refresh"))
                    weight = gr.Slider(0.0, 1.0, weight0, step=0.01, label="Aesthetic weight (under 0.25 keeps the "
                                       "content)", elem_id=self.elem_id("weight"))
                    steps = gr.Slider(0, 50, steps0, step=1, label="Aesthetic steps", elem_id=self.elem_id("steps"))
                    lr = gr.Number(label="Aesthetic learning rate", value=lr0, elem_id=self.elem_id("lr"))
                thumbnail = gr.Image(label="made from", interactive=False, height=160, elem_id=self.elem_id("thumb"))
            with gr.Row():
                slerp = gr.Checkbox(label="Slerp interpolation", value=slerp0, elem_id=self.elem_id("slerp"))
                slerp_angle = gr.Slider(0.0, 1.0, 0.1, step=0.01, label="Slerp angle",
                                        elem_id=self.elem_id("slerp_angle"))
                batchwise = gr.Checkbox(label="Batch-wise (one tuning per batch)", value=True,
                                        elem_id=self.elem_id("batchwise"))
            with gr.Row():
                text = gr.Textbox(label="Aesthetic text for imgs", lines=1, elem_id=self.elem_id("text"))
                text_negative = gr.Checkbox(label="Is negative text", value=False,
                                            elem_id=self.elem_id("text_negative"))
            with gr.Row():
                hypernetwork = gr.Dropdown(label="Hypernetwork with it (an artist's style)",
                                           choices=[NONE, *shared.hypernetworks], value=NONE,
                                           elem_id=self.elem_id("hypernetwork"))
                strength = gr.Slider(0.0, 2.0, 1.0, step=0.05, label="Hypernetwork strength",
                                     elem_id=self.elem_id("hypernetwork_strength"))

        def refreshed():
            shared.reload_hypernetworks()
            return gr.update(choices=names()), gr.update(choices=[NONE, *shared.hypernetworks])

        refresh.click(refreshed, outputs=[embedding, hypernetwork])
        embedding.change(_preview, inputs=[embedding], outputs=[thumbnail])
        preset.change(lambda name: [gr.update(value=v) for v in AESTHETIC_PRESETS[name]], inputs=[preset],
                      outputs=[weight, steps, lr, slerp])
        fields = {"lr": lr, "weight": weight, "steps": steps, "embedding": embedding, "slerp": slerp, "text": text,
                  "text_negative": text_negative, "slerp_angle": slerp_angle, "batchwise": batchwise}
        self.infotext_fields = [(enabled, lambda d: INFOTEXT_KEYS["embedding"] in d)]
        self.infotext_fields += [(component, INFOTEXT_KEYS[k]) for k, component in fields.items()]
        self.infotext_fields += [(hypernetwork, "Hypernet"), (strength, "Hypernet strength")]
        self.paste_field_names = [INFOTEXT_KEYS[k] for k in fields]
        return [enabled, embedding, weight, steps, lr, slerp, slerp_angle, text, text_negative, batchwise,
                hypernetwork, strength]

    def process(self, p, enabled=False, embedding=NONE, weight=0.2, steps=5, lr=1e-4, slerp=False, slerp_angle=0.1,
                text="", text_negative=False, batchwise=True, hypernetwork=NONE, strength=1.0):
        if not enabled:
            return
        if hypernetwork not in (None, "", NONE) and not getattr(p, "disable_extra_networks", False):
            if hypernetwork not in shared.hypernetworks:
                raise ValueError(f"SCAL-SDT: hypernetwork {hypernetwork!r} is not in models/hypernetworks")
            p.all_prompts = with_hypernetwork(p.all_prompts, hypernetwork, float(strength))
            if getattr(p, "all_hr_prompts", None):
                p.all_hr_prompts = with_hypernetwork(p.all_hr_prompts, hypernetwork, float(strength))
            p.extra_generation_params.update({"Hypernet": hypernetwork, "Hypernet strength": float(strength)})
        if embedding in (None, "", NONE):
            return
        settings = AestheticSettings(float(weight), int(steps), float(lr), bool(slerp), float(slerp_angle), text or "",
                                     bool(text_negative), bool(batchwise))
        try:
            path = find_embedding(embedding, webui_aesthetic.aesthetic_dir())
            webui_aesthetic.apply_to(p, path, settings, getattr(shared.opts, "scal_sdt_aesthetic_clip", "") or "")
        except (ValueError, OSError) as e:  # the image is still made, plain; the reason shows under it
            print(f"[SCAL-SDT] aesthetic gradients not applied: {e}")
            p.comment(f"SCAL-SDT aesthetic gradients not applied: {e}")


script_callbacks.on_ui_settings(on_ui_settings)
