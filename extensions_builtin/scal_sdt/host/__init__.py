"""The host boundary: the one place that knows who owns the model (the WebUI or a checkpoint file)."""
