"""Hypernetworks in the WebUI's format: create, train, save, load and apply (``module``, ``format``, ``apply``,
``trainer``; ``prompt_tag`` for the WebUI's ``<hypernet:…>`` syntax)."""
