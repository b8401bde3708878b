"""Training plumbing shared by every trainer: the image folder, prompt templates, buckets and the latent dataset.

Nothing here knows the host: the VAE comes in as an ``encode_moments`` function and the model as a loss.
"""
