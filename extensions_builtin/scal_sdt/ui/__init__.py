"""Gradio blocks for each feature, built from the feature's config; used by the WebUI tabs and `scal-sdt ui`."""
