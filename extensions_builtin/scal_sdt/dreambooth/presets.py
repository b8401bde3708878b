"""Memory presets for DreamBooth by card size: what ``preset 8gb`` etc. set for a fine-tune of the whole UNet.

The shared presets (training/presets.py) suit runs whose trainable state is small (embeddings, LoRA) and keep AdamW;
a full fine-tune holds the UNet's weights, their gradients and the optimizer's state (SD1 in fp32 with AdamW: 3.2 +
3.2 + 6.4 GiB), so DreamBooth's presets change what is held (the numbers are preflight.py's estimates, batch 1, at
the family's native size, which a test holds under each card):
- Adafactor's factored moments instead of AdamW's two full ones, and ``fused_backward``: each weight steps as its
  gradient is done and the gradient is freed, so the gradients are never held together (this needs one micro-batch
  a step: no accumulation);
- gradient checkpointing and prompts encoded once (the text encoders leave the device), the VAE offloaded;
- bf16 weights (``master_weights bf16``: weights and optimizer state in bf16) where fp32 weights do not fit: SD1/SD2
  on 6 GB, SDXL everywhere below 24 GB.
SD1 on 8 GB: about 7.0 GiB (1.7 of it Adafactor's state: SD1's convolutions keep 2/3 of their size there); SDXL
needs about 6.9 GiB even in bf16, so no preset makes it fit a 6 GB card (train a LoRA there). 12 and 24 GB cards
keep fp32 weights and hold the gradients (no fused step); 24 GB runs AdamW.
"""
from __future__ import annotations

_SMALL = dict(batch_size=1, grad_accum=1, gradient_checkpointing=True, cache_text=True, offload_vae=True,
              optimizer="adafactor", fused_backward=True)
_BF16 = dict(_SMALL, master_weights="bf16", precision="bf16")
_FP32 = dict(_SMALL, master_weights="fp32", precision="fp16")

DREAMBOOTH_PRESETS: dict[str, dict[str, dict]] = {
    "6gb": {"sd1": _BF16, "sd2": _BF16, "sdxl": _BF16},
    "8gb": {"sd1": _FP32, "sd2": _FP32, "sdxl": _BF16},
    "12gb": {
        # gradients held (no fused step: accumulation works), Adafactor's step
        "sd1": dict(_FP32, fused_backward=False, grad_accum=4, precision="bf16"),
        "sd2": dict(_FP32, fused_backward=False, grad_accum=4, precision="bf16"),
        "sdxl": dict(_BF16),
    },
    "24gb": {
        # AdamW with fp32 weights (≈ 16 GiB for SD1), two images at once
        "sd1": dict(_FP32, optimizer="adamw", fused_backward=False, batch_size=2, grad_accum=2, precision="bf16",
                    gradient_checkpointing=False),
        "sd2": dict(_FP32, optimizer="adamw", fused_backward=False, batch_size=1, grad_accum=4, precision="bf16"),
        "sdxl": dict(_BF16, fused_backward=False, grad_accum=4),
    },
}
