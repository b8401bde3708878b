"""Config dataclasses are the one source of a job's parameters.

A field is declared once with :func:`option` (type, default, help, choices, bounds). From the dataclass come the
command-line flags (:func:`add_arguments` / :func:`from_namespace`), the forms and the API bodies (:func:`describe`),
and the metadata saved beside results (:func:`to_dict`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import typing
from typing import Any

MISSING = dataclasses.MISSING


def option(default: Any = MISSING, help: str = "", *, choices: tuple | None = None, min: float | None = None,
           max: float | None = None, flag: str | None = None, positional: bool = False, group: str = "",
           suggestions: Any = None, folder: bool = False) -> Any:
    """Declare a config field. ``flag`` overrides the derived ``--kebab-name`` (keep issue-given names stable).
    ``suggestions`` (a tuple, or a function giving one) are values a form offers while still accepting others.
    ``folder``: the value is a folder (a form offers a picker)."""
    meta = dict(help=help, choices=choices, min=min, max=max, flag=flag, positional=positional, group=group,
                suggestions=suggestions, folder=folder)
    if default is MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_type(cls: type, f: dataclasses.Field) -> type:
    hints = typing.get_type_hints(cls)
    tp = hints[f.name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return args[0]
    return tp


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


# -- options named in messages ------------------------------------------------------------------------------------
# A message or help text names an option by its field, and each face words it its own way: the flag on the command
# line, the form's label on the page and in the WebUI's tabs, the JSON key in the API. One message, three renderings.
FACES = ("cli", "page", "api")
_MENTION = re.compile(r"⟦(\+?)([A-Za-z_][A-Za-z0-9_]*)(?:=([^⟧]*))?⟧")


def mention(name: str, value: Any = MISSING) -> str:
    """The option ``name`` (or its setting ``name = value``) in a message: ``--lr`` / “lr” / ``"lr"``; with a value
    ``--optimizer adafactor`` / “optimizer” = adafactor / ``"optimizer": "adafactor"``. See :func:`speak`."""
    return f"⟦{name}⟧" if value is MISSING else f"⟦{name}={json.dumps(value)}⟧"


def turn_on(name: str) -> str:
    """Asking for a switch: "pass --overwrite" / "tick “overwrite”" / 'send "overwrite": true'."""
    return f"⟦+{name}⟧"


def form_label(name: str) -> str:
    """The label a form gives the field ``name`` (ui/form.py)."""
    return name.replace("_", " ")


def _cli_flag(name: str, classes: typing.Sequence[type]) -> str:
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.name == name:
                return flag_name(f)
    return "--" + name.replace("_", "-")


def speak(text: str, face: str, *classes: type) -> str:
    """``text`` with every :func:`mention` / :func:`turn_on` worded for ``face`` ("cli", "page" or "api");
    ``classes``: the configs whose flags the command line knows (a field's own ``flag``)."""
    if face not in FACES:
        raise ValueError(f"face must be one of {', '.join(FACES)}, not {face!r}")

    def word(m: re.Match) -> str:
        switch, name, raw = m.group(1), m.group(2), m.group(3)
        value = MISSING if raw is None else json.loads(raw)
        flag, label = _cli_flag(name, classes), f"“{form_label(name)}”"
        if switch:
            return {"cli": f"pass {flag}", "page": f"tick {label}", "api": f'send "{name}": true'}[face]
        if face == "api":
            return f'"{name}"' if value is MISSING else f'"{name}": {json.dumps(value)}'
        if value is MISSING:
            return flag if face == "cli" else label
        if isinstance(value, bool):
            if face == "cli":
                return flag if value else "--no-" + flag[2:]
            return f"{label} {'ticked' if value else 'unticked'}"
        return f"{flag} {shlex.quote(str(value))}" if face == "cli" else f"{label} = {value}"

    return _MENTION.sub(word, str(text))


def add_arguments(parser: argparse.ArgumentParser, cls: type, defer_required: bool = False) -> None:
    """Add one flag per field of ``cls``, with its default, choices and help text. ``defer_required``: a required
    option may be missing here (it can come from a config file; the caller checks it afterwards)."""
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        target = parser
        if meta.get("group"):
            target = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        tp = field_type(cls, f)
        needed = f.default is MISSING and f.default_factory is MISSING
        default = None if needed else (f.default if f.default is not MISSING else f.default_factory())
        required = needed and not defer_required
        help_text = speak(meta.get("help", ""), "cli", cls).replace("%", "%%")
        if not needed:
            help_text += f" (default: {default!r})"
        kwargs: dict[str, Any] = dict(help=help_text, dest=f.name)
        if tp is bool:
            target.add_argument(flag_name(f), action=argparse.BooleanOptionalAction, default=default, **kwargs)
            continue
        many = typing.get_origin(tp) is list  # list[str]: several values (FILE...)
        kwargs["type"] = tp if tp in (int, float, str) else str
        if many:
            kwargs["nargs"] = "+" if required else "*"
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if meta.get("positional"):
            kwargs.pop("dest")
            kwargs.setdefault("nargs", None if required else "?")
            target.add_argument(f.name, metavar=f.name.upper(), default=default, **kwargs)
        else:
            target.add_argument(flag_name(f), required=required, default=default,
                                metavar=f.name.upper(), **kwargs)


def from_namespace(cls: type, ns: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(ns).items() if k in names})


def coerce(name: str, tp: type, value: Any) -> Any:
    """A JSON value as the field's type: a number where text is expected (``"lr": 0.005``) becomes its text,
    numeric text where a number is expected its number; what cannot be is a ValueError naming the field."""
    if value is None or tp not in (bool, int, float, str):
        return value
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str and (isinstance(value, str) or number):
        return value if isinstance(value, str) else repr(value)
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (int, float) and (number or isinstance(value, str)):
        try:
            x = float(value)
        except ValueError:
            x = None
        if tp is float and x is not None:
            return x
        if x is not None and x.is_integer():
            return int(x)
    what = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}[tp]
    raise ValueError(f"{name} must be {what}, not {value!r}")


def from_dict(cls: type, data: dict):
    """Build a config from a dict (an API body or saved metadata); unknown keys are refused by name, values are
    taken as their field's type (:func:`coerce`)."""
    if not isinstance(data, dict):
        raise ValueError(f"options for {cls.__name__} must be a JSON object, not {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown option(s) for {cls.__name__}: {', '.join(unknown)}")
    return cls(**{k: coerce(k, field_type(cls, fields[k]), v) for k, v in data.items()})


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def describe(cls: type) -> list[dict]:
    """Field descriptions for building a form or an API schema."""
    out = []
    for f in dataclasses.fields(cls):
        required = f.default is MISSING and f.default_factory is MISSING
        out.append(dict(name=f.name, type=field_type(cls, f).__name__, required=required,
                        default=None if required else (f.default if f.default is not MISSING else f.default_factory()),
                        **{k: speak(v, "api") if k == "help" else v for k, v in f.metadata.items()
                           if k not in ("flag", "positional", "suggestions")}))
    return out


def check_bounds(cfg) -> None:
    """Validate every field against its declared choices and bounds; the message names the field."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        meta = f.metadata
        if value is None:
            continue
        if meta.get("choices") and value not in meta["choices"]:
            raise ValueError(f"{f.name} must be one of {', '.join(map(str, meta['choices']))}, not {value!r}")
        if meta.get("min") is not None and value < meta["min"]:
            raise ValueError(f"{f.name} must be ≥ {meta['min']}, not {value!r}")
        if meta.get("max") is not None and value > meta["max"]:
            raise ValueError(f"{f.name} must be ≤ {meta['max']}, not {value!r}")


def changed_options(cfg) -> set[str]:
    """Fields whose value differs from the config's default (what a form user changed)."""
    out = set()
    for f in dataclasses.fields(cfg):
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING
                                                              else None)
        if getattr(cfg, f.name) != default:
            out.add(f.name)
    return out
