"""DreamBooth: fine-tune a checkpoint's UNet (and optionally its text encoders) on a concept, with prior preservation."""
