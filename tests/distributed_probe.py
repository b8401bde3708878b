"""Run by tests/test_loop_fine_tune.py under torchrun: one process of a two-process run of the loop on the CPU.
Usage: distributed_probe.py OUT_DIR RUN_DIR FUSED(0|1); writes OUT_DIR/rank{R}.pt with the final weights."""
import sys
from pathlib import Path

import torch

from recording import RecordingReporter
from scal_sdt.training import distributed
from scal_sdt.training.loop import run_loop
from test_loop_fine_tune import TwoLayerJob, options

out, run_dir, fused = Path(sys.argv[1]), Path(sys.argv[2]), bool(int(sys.argv[3]))
processes = distributed.current()
job = TwoLayerJob(seeds=(processes.rank,))  # what the command line does: each process its own seed
run_loop(options(fused_backward=fused, steps=6, save_every=3), job, run_dir, RecordingReporter(), torch.device("cpu"))
out.mkdir(parents=True, exist_ok=True)
torch.save({"weights": [job.w1.detach(), job.w2.detach()], "saved": bool(job.saved)}, out / f"rank{processes.rank}.pt")
