"""Tagging a dataset folder: ONNX taggers (WD14, DeepDanbooru, tag_mapping.json exports, JoyTag) through
onnxruntime, tag post-processing, a content-hash cache and the batched folder pipeline."""
