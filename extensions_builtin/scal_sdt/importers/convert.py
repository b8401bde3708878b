"""``scal-sdt import-config``: find the file's format, map it, check the result is a config we can run, write it."""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import check_bounds, option
from .concepts import Concepts, concepts_path_for
from .kohya import import_kohya, looks_like_kohya
from .onetrainer import import_onetrainer, looks_like_onetrainer
from .report import UNSUPPORTED, ImportReport

FORMATS = ("auto", "kohya_ss", "sd-scripts", "onetrainer")


@dataclass(kw_only=True)
class ImportConfig:
    file: str = option(help="the other trainer's file: a kohya_ss GUI .json, an sd-scripts .toml, a OneTrainer "
                            ".json preset or saved config", positional=True)
    dataset_config: str = option("", "sd-scripts: its dataset .toml (when the training file does not name it)")
    format: str = option("auto", "the file's format (auto: from its keys)", choices=FORMATS)
    out: str = option("", "where our config goes (.toml or .json); default: FILE's name with .scal-sdt.toml")
    overwrite: bool = option(False, "replace an existing output file")

    def __post_init__(self):
        check_bounds(self)


@dataclass
class Imported:
    command: str
    options: dict
    report: ImportReport
    missing: str = ""  # what the result still needs before it runs (the file named no data folder)
    concepts: Concepts | None = None  # several datasets: our concepts JSON, written beside the config

    def concepts_at(self, path: Path) -> None:
        """The config names its concepts JSON ``path`` (where :func:`import_file` writes it)."""
        if self.concepts is not None:
            self.options["concepts"] = str(path)


def read_foreign(path: Path, fmt: str = "auto", dataset: Path | None = None) -> Imported:
    report = ImportReport(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if fmt == "auto":
        if path.suffix.lower() == ".toml":
            fmt = "sd-scripts"
        else:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{e.lineno}:{e.colno}: {e.msg}") from None
            if not isinstance(data, dict):
                raise ValueError(f"{path}: a config is a JSON object")
            fmt = ("onetrainer" if looks_like_onetrainer(data) else "kohya_ss" if looks_like_kohya(data) else "")
            if not fmt:
                raise ValueError(f"{path}: neither a kohya_ss GUI config nor a OneTrainer one (pass --format)")
    if fmt == "onetrainer":
        command, options, concepts = import_onetrainer(path, report)
    else:
        command, options, concepts = import_kohya(path, report, dataset)
    imported = Imported(command, options, report, concepts=concepts)
    imported.concepts_at(concepts_path_for(path.with_name(path.stem + ".scal-sdt.toml")))
    return imported


def checked(imported: Imported, name_from: Path):
    """The options as a config we can run: a missing name comes from the file's name; a value our config refuses is
    taken out and reported as not supported (with the reason), never passed on silently."""
    from .. import runs

    kind = runs.config_for_command(imported.command)
    options = dict(imported.options)
    if not options.get("name"):
        options["name"] = re.sub(r"[^A-Za-z0-9_.-]+", "-", name_from.stem).strip("-.") or "imported"
        imported.report.add("(name)", "", "approximated", {"name": options["name"]}, "from the file's name")
    fields = {f.name for f in dataclasses.fields(kind)}
    for _ in range(len(options) + 1):
        try:
            cfg = kind(**{k: v for k, v in options.items() if k in fields})
            imported.options = {k: v for k, v in options.items() if k in fields}
            return cfg
        except ValueError as e:
            bad = next((k for k in sorted(options, key=len, reverse=True)
                        if re.search(r"(?<![\w-])" + re.escape(k) + r"(?![\w-])", str(e)) and k != "name"), None)
            if bad is None:  # something the file does not say at all (its data folder): the user adds it
                imported.options = {k: v for k, v in options.items() if k in fields}
                imported.missing = str(e)
                return None
            value = options.pop(bad)
            for entry in imported.report.entries:
                if bad in entry.ours:
                    entry.ours.pop(bad)
                    entry.status, entry.how = UNSUPPORTED, f"{bad} = {value!r} refused here: {e}"
    raise ValueError("the imported options do not make a config")


def import_file(cfg: ImportConfig) -> tuple[Imported, Path]:
    """Read ``cfg.file``, write our config (the report as comments at its top) and return both."""
    from ..config_files import COMMAND_KEY, SUFFIXES
    from ..files import atomic_write_text

    source = Path(cfg.file)
    out = Path(cfg.out) if cfg.out else source.with_name(source.stem + ".scal-sdt.toml")
    if out.suffix.lower() not in SUFFIXES:
        raise ValueError(f"out {out}: give a .toml or .json file name")
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    imported = read_foreign(source, cfg.format, Path(cfg.dataset_config) if cfg.dataset_config else None)
    imported.concepts_at(concepts_path_for(out))
    checked(imported, source)
    if imported.concepts is not None:  # first: the config never names a file that is not there
        imported.concepts.write(concepts_path_for(out))
    values = {COMMAND_KEY: imported.command, **imported.options}
    if out.suffix.lower() == ".json":
        text = json.dumps({**values, "imported_report": imported.report.lines()}, indent=2) + "\n"
        atomic_write_text(out, text)
        return imported, out
    import tomli_w

    notes = imported.report.lines() + ([f"STILL NEEDED: {imported.missing}"] if imported.missing else [])
    header = "".join(f"# {line}\n" for line in notes)
    atomic_write_text(out, header + "\n" + tomli_w.dumps(values))
    return imported, out
