"""Textual Inversion embeddings: the file formats the WebUI reads and writes, and (elsewhere) training them."""
