"""A job's options as a file: TOML or JSON, read with each bad key or value named by file and line, written atomically.

The file is flat: one key per option of the config (the names of the API body, ``lr``, ``batch_size``), and
optionally ``command`` (the ``scal-sdt`` sub-command it is for)::

    command = "train-embedding"
    name = "mychar"
    data = "datasets/mychar"
    lr = "0.005:200, 1e-3"
    steps = 3000
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # the WebUI's Python 3.10
    import tomli as tomllib

from .config import coerce, field_type, flag_name, to_dict
from .files import atomic_write_text

SUFFIXES = (".toml", ".json")
#: the key that names the sub-command a file is for (not an option)
COMMAND_KEY = "command"


class ConfigFileError(ValueError):
    """A config file that cannot be used; the message starts with ``FILE:LINE:``."""


@dataclass
class OptionsFile:
    """A config file's keys and values, and where each key stands in it."""

    path: Path
    values: dict[str, Any]
    text: str

    def line_of(self, key: str) -> int | None:
        """The line (from 1) of ``key``'s first assignment, or None."""
        if self.path.suffix.lower() == ".json":
            pattern = re.compile(r'"' + re.escape(key) + r'"\s*:')
        else:
            pattern = re.compile(r'^[ \t]*(?:' + re.escape(key) + r'|"' + re.escape(key) + r'"|\'' + re.escape(key)
                                 + r'\')[ \t]*=', re.M)
        m = pattern.search(self.text)
        return None if m is None else self.text.count("\n", 0, m.start()) + 1

    def where(self, key: str) -> str:
        line = self.line_of(key)
        return f"{self.path}:{line}" if line else str(self.path)

    def error(self, key: str, message: str) -> ConfigFileError:
        return ConfigFileError(f"{self.where(key)}: {message}")


def read_file(path: str | Path) -> OptionsFile:
    """Parse a ``.toml`` or ``.json`` file into its top-level keys; a syntax error names the file, line and column."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigFileError(f"{path}: a config file is .toml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigFileError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigFileError(f"{path}: cannot be read ({e})") from None
    if path.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigFileError(f"{path}:{e.lineno}:{e.colno}: {e.msg}") from None
        if not isinstance(values, dict):
            raise ConfigFileError(f"{path}:1: the options must be a JSON object {{\"name\": ...}}, not "
                                  f"{type(values).__name__}")
    else:
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            message = str(e)
            m = re.search(r"\(at line (\d+), column (\d+)\)", message)
            where = f"{path}:{m.group(1)}:{m.group(2)}" if m else str(path)
            raise ConfigFileError(f"{where}: {re.sub(r' ?[(]at line .*[)]', '', message)}") from None
    return OptionsFile(path, values, text)


def options_for(cls: type, source: OptionsFile, command: str | None = None) -> dict[str, Any]:
    """The options of ``source`` for the config ``cls`` (sub-command ``command``), each as its field's type and
    checked against its choices and bounds. A key of another command, an unknown key or a bad value is a
    :class:`ConfigFileError` naming the file and line (and, for a misspelt key, the option it resembles)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for key, value in source.values.items():
        if key == COMMAND_KEY:
            if command is not None and value != command:
                raise source.error(key, f"this file is for scal-sdt {value}, not {command}")
            continue
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise source.error(key, f"unknown option {key!r} for {command or cls.__name__}{hint}")
        f = fields[key]
        try:
            value = coerce(key, field_type(cls, f), value)
            check_value(f, value)
        except ValueError as e:
            raise source.error(key, str(e)) from None
        out[key] = value
    return out


def check_value(f: dataclasses.Field, value: Any) -> None:
    """One field's declared choices and bounds (config.check_bounds, for one value)."""
    meta = f.metadata
    if value is None:
        return
    if meta.get("choices") and value not in meta["choices"]:
        raise ValueError(f"{f.name} must be one of {', '.join(map(repr, meta['choices']))}, not {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if meta.get("min") is not None and value < meta["min"]:
            raise ValueError(f"{f.name} must be ≥ {meta['min']}, not {value!r}")
        if meta.get("max") is not None and value > meta["max"]:
            raise ValueError(f"{f.name} must be ≤ {meta['max']}, not {value!r}")


def locate(error: ValueError, source: OptionsFile | None, keys: set[str]) -> ValueError:
    """An error the config raised while checking itself, with the file and line of the option it names when that
    option came from ``source`` (``keys``: those taken from the file)."""
    if source is None or isinstance(error, ConfigFileError):
        return error
    text = str(error)
    for key in sorted(keys, key=len, reverse=True):
        if re.search(r"(?<![\w-])" + re.escape(key) + r"(?![\w-])", text) or f"⟦{key}" in text:
            return ConfigFileError(f"{source.where(key)}: {text}")
    return error


def load_config(path: str | Path, cls: type, command: str | None = None, overrides: dict | None = None):
    """A config from a file, with ``overrides`` (the options given on the command line) winning."""
    source = read_file(path)
    values = options_for(cls, source, command)
    merged = {**values, **(overrides or {})}
    try:
        return cls(**merged)
    except ValueError as e:
        raise locate(e, source, set(values) - set(overrides or {})) from None
    except TypeError as e:  # a required option missing from both
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in merged
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigFileError(f"{path}: {', '.join(missing)} is required (in the file or as "
                                  f"{', '.join(flag_name(cls.__dataclass_fields__[m]) for m in missing)})") from None
        raise


def config_text(cfg, command: str | None = None, suffix: str = ".toml") -> str:
    """``cfg`` as the text of a config file (every option, in the config's order)."""
    values = {k: v for k, v in to_dict(cfg).items() if v is not None}  # TOML has no null: None is the default
    if command:
        values = {COMMAND_KEY: command, **values}
    if suffix.lower() == ".json":
        return json.dumps(values, indent=2) + "\n"
    import tomli_w

    header = f"# scal-sdt {command}: every option, resolved\n" if command else ""
    return header + tomli_w.dumps(values)


def write_config(path: str | Path, cfg, command: str | None = None) -> Path:
    """Write ``cfg`` (all its options) to ``path`` (.toml or .json), atomically."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"save_config {path}: give a .toml or .json file name")
    atomic_write_text(path, config_text(cfg, command, path.suffix))
    return path


def past_options(path: str | Path, cls: type, command: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """The options of a past run, to fill a form again: from a config file, a run folder (its ``config.toml``), a
    result ``.safetensors`` (the options in its metadata) or DreamBooth's ``NAME.json`` beside its checkpoint.
    Returns the options and notes (options of an older version that this one does not know, skipped)."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in ("config.toml", "config.json") if (path / name).is_file()]
        if not found:
            raise ConfigFileError(f"{path}: no config.toml in this folder (a run folder has one since runs write it)")
        path = found[0]
    if not path.exists():
        raise ConfigFileError(f"{path}: no such file or folder")
    saved: dict | None = None
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as e:  # noqa: BLE001 - any unreadable file is named, never half-read
            raise ConfigFileError(f"{path}: cannot be read ({e})") from None
        if "scal_sdt" not in meta:
            raise ConfigFileError(f"{path}: its metadata holds no scal-sdt options (made by another trainer?)")
        saved = json.loads(meta["scal_sdt"])
    elif path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("config"), dict):  # DreamBooth's NAME.json
            saved = data["config"]
    if saved is None:
        return options_for(cls, read_file(path), command), []
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out, notes = {}, []
    for key, value in saved.items():
        if key not in fields:
            notes.append(f"{key} (not an option of {command or cls.__name__} here)")
            continue
        try:
            value = coerce(key, field_type(cls, fields[key]), value)
            check_value(fields[key], value)
        except ValueError as e:
            notes.append(f"{key}: {e}")
            continue
        out[key] = value
    return out, notes
