"""SCAL-SDT: dataset tagging and personalisation training for Stable Diffusion.

The package is host-agnostic: only ``scal_sdt.host`` (and the WebUI's ``scripts/``) know who owns the model.
"""

__version__ = "0.1.0"
