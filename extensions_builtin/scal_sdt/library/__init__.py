"""What a model file is (inspect), the library of a WebUI's folders with A/B previews, and the method chooser."""
