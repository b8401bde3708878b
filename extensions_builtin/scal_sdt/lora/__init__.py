"""LoRA on UNet layers, in kohya's file format (the WebUI's built-in Lora extension, ComfyUI and kohya's tools read it)."""
