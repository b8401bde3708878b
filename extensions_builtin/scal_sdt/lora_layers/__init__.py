"""Low-rank layers and the kohya file they are saved in, below every trainer that writes one: the small attention
LoRA of embedding runs (`network.py`) and a LoRA extracted from a fine-tune (`extract.py`, DreamBooth and
`scal-sdt lora extract`). The LoRA trainer itself is `lora/`."""
