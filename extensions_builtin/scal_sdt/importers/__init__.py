"""Other trainers' configurations read as they are: a kohya_ss GUI JSON, an sd-scripts TOML (with its dataset TOML),
a OneTrainer JSON preset -> our options and a report of every option (mapped, approximated and how, not supported)."""
