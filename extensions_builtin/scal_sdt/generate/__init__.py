"""Sampling images from any model on the command line, with embeddings usable by name as in the WebUI."""
