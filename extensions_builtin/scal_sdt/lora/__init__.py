"""LoRA training (LoRA, LoCon, LoHa, LoKr, DoRA on LyCORIS' adapters), the kohya-format file and its tools (merge,
resize, extract); the WebUI's built-in Lora extension, ComfyUI and kohya's tools read the files."""
