"""WebUI entry point. Thin on purpose: it puts the extension's package on sys.path and registers the Train tab,
the Tagger and Library tabs and the /scal-sdt/v1 API; the features live in ``extensions_builtin/scal_sdt`` (importable as ``scal_sdt``).
The WebUI keeps the extension root on sys.path only while this file is imported, so everything is imported here."""
import os
import sys

_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_packages = os.path.join(_root, "extensions_builtin")
if _packages not in sys.path:
    sys.path.insert(0, _packages)

from modules import call_queue, script_callbacks, shared  # noqa: E402

try:
    from scal_sdt.webui import service as webui_service  # noqa: E402
    from scal_sdt.webui.adapter import checkpoint_choices  # noqa: E402
    from scal_sdt.ui.form import Offer  # noqa: E402
    from scal_sdt.ui.training_tab import DREAMBOOTH, EMBEDDING, HOST_FIELDS, HYPERNETWORK, LORA, training_tab  # noqa: E402
    from scal_sdt.ui.tagger_tab import tagger_tab  # noqa: E402
    from scal_sdt.tagging.runner import TaggingRunner  # noqa: E402
    from scal_sdt.ui.aesthetic_tab import aesthetic_tab  # noqa: E402
    from scal_sdt.ui.library_tab import library_tab  # noqa: E402
    from scal_sdt.ui.chooser_tab import chooser_tab  # noqa: E402
    from scal_sdt.webui.library import WebUILibrary, use_in_txt2img, webui_family  # noqa: E402
    from scal_sdt.ui.queue_tab import queue_tab  # noqa: E402
    _missing = None
except ImportError as e:  # an optional dependency failed to install: say so in the tab, keep the WebUI running
    _missing = e


def _say_missing(gr, package):
    gr.HTML(f"<p>SCAL-SDT cannot start: {package} is missing. Fix it with: <code>{sys.executable} -m pip install "
            f"{package}</code>, then restart the WebUI.</p>")


QUEUE_AUTOSTART = "scal_sdt_queue_autostart"  # webui_service.AUTOSTART_OPTION, named here too: the setting
# is registered even when an import above failed
_train_tab_built: list[bool] = []  # the WebUI called on_ui_train_tabs (its Train tab is built before on_ui_tabs)


def on_ui_train_tabs(params):
    """Our sub-tabs of the WebUI's Train tab (in Forge, which has none, they are a tab of their own: on_ui_tabs)."""
    import gradio as gr

    forms = {}
    if params is not None:
        _train_tab_built.append(True)
    for label, prefix in (("Embedding", "scal_sdt_ti"), ("Hypernetwork", "scal_sdt_hn"), ("DreamBooth", "scal_sdt_db"),
                          ("LoRA", "scal_sdt_lora")):
        with gr.Tab(label=f"SCAL-SDT {label}", id=prefix, elem_id=f"{prefix}_tab"):
            if _missing is not None:
                _say_missing(gr, getattr(_missing, "name", None) or str(_missing))
                continue
            kind = next(k for k in (EMBEDDING, HYPERNETWORK, DREAMBOOTH, LORA) if k.elem_prefix == prefix)
            dreambooth = kind is DREAMBOOTH  # picks its source checkpoint from the WebUI's list
            forms[prefix] = training_tab(
                kind, run=webui_service.run_training, interrupt=webui_service.interrupt,
                exclude=("device", "memory_mode") if dreambooth else HOST_FIELDS,
                offers={"model": Offer(checkpoint_choices, webui_service.SOURCE_HELP)} if dreambooth else None,
                steer=webui_service.steer, defaults=webui_service.webui_defaults(kind.config),
                enqueue=webui_service.enqueue, native_resolution=webui_service.native_resolution,
                audit=webui_service.audit, evaluate=webui_service.evaluate, keep=webui_service.keep,
                txt2img_preview_params=getattr(params, "txt2img_preview_params", None), progress_js=True,
                wrap=lambda fn: call_queue.wrap_gradio_gpu_call(fn, extra_outputs=[None, None]))
    with gr.Tab(label="SCAL-SDT Aesthetic embedding", id="scal_sdt_ae", elem_id="scal_sdt_ae_tab"):
        if _missing is not None:
            _say_missing(gr, getattr(_missing, "name", None) or str(_missing))
        else:  # the loaded model's family picks the image encoders; the file goes to models/aesthetic_embeddings
            aesthetic_tab(lambda cfg: webui_service.make_aesthetic(cfg), exclude=("model", "device"))
    with gr.Tab(label="SCAL-SDT Choose a method", id="scal_sdt_choose", elem_id="scal_sdt_choose_tab"):
        if _missing is not None:
            _say_missing(gr, getattr(_missing, "name", None) or str(_missing))
        else:  # fills the chosen tab's form; the family is the loaded model's
            chooser_tab(forms, family=webui_family)
    with gr.Tab(label="SCAL-SDT Queue", id="scal_sdt_queue", elem_id="scal_sdt_queue_tab"):
        if _missing is not None:
            _say_missing(gr, getattr(_missing, "name", None) or str(_missing))
        else:  # the jobs run one after another on the loaded model, each under the WebUI's GPU lock
            queue_tab(webui_service.queue_runner())


def on_ui_tabs():
    import importlib.util

    import gradio as gr

    with gr.Blocks(analytics_enabled=False) as tab:
        if _missing is not None:
            _say_missing(gr, getattr(_missing, "name", None) or str(_missing))
        elif importlib.util.find_spec("onnxruntime") is None:
            _say_missing(gr, "onnxruntime")
        else:
            tagger_tab(TaggingRunner(captioner=webui_service.BlipCaptioner()))
    tabs = [(tab, "SCAL-SDT Tagger", "scal_sdt_tagger")]
    with gr.Blocks(analytics_enabled=False) as library:
        if _missing is not None:
            _say_missing(gr, getattr(_missing, "name", None) or str(_missing))
        else:  # "use" writes into txt2img's prompt (captured below) and switches to txt2img
            prompt = _components.get("txt2img_prompt")
            library_tab(WebUILibrary(), use=use_in_txt2img if prompt is not None else None,
                        use_targets=[prompt], use_js="switch_to_txt2img")
    tabs.append((library, "SCAL-SDT Library", "scal_sdt_library"))
    if not _train_tab_built:  # Forge removed the Train tab and never calls on_ui_train_tabs (A1111, reForge do)
        with gr.Blocks(analytics_enabled=False) as train:
            with gr.Tabs():
                on_ui_train_tabs(None)
        tabs.append((train, "SCAL-SDT Train", "scal_sdt_train"))
    return tabs


_components = {}


def on_after_component(component, **kwargs):
    """Keep txt2img's prompt box: the Library's "use" writes into it (the WebUI builds txt2img before our tabs)."""
    if kwargs.get("elem_id") == "txt2img_prompt":
        _components["txt2img_prompt"] = component


def on_ui_settings():
    shared.opts.add_option(QUEUE_AUTOSTART, shared.OptionInfo(
        False, "Run the SCAL-SDT training queue when the WebUI starts (the jobs waiting in its folder, one after "
               "another, each under the WebUI's GPU queue)", section=("scal_sdt", "SCAL-SDT")))


def on_app_started(demo, app):
    if _missing is None:
        webui_service.add_api_routes(app)
        webui_service.start_queue_with_webui()


script_callbacks.on_ui_train_tabs(on_ui_train_tabs)
script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_app_started(on_app_started)
script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_after_component(on_after_component)
