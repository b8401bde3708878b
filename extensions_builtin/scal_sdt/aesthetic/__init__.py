"""Aesthetic gradients (Gallego 2022): an aesthetic embedding is the mean CLIP image embedding of a folder; at
generation the text encoder is nudged towards it for a few steps and the prompt re-encoded."""
