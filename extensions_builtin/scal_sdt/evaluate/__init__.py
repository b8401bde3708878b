"""Choosing the best saved step of a run: a grid of its checkpoints x strengths x prompts, scores per step and a
suggested step (`scal-sdt evaluate RUN_DIR`)."""
