"""A training queue that survives restarts: each job a file in a queue folder, run one after another."""
