"""Every third-party module the package, the tests and bench import is declared in pyproject.toml.

A fresh machine has only what the project declares (the README's test command installs ``.[test]``). A module that is
only present here because someone installed it by hand makes CI fail on a new machine; this test finds it on any
machine where the packages are installed, without building a venv: each imported top-level module must belong to a
declared distribution or to one that a declared distribution requires (followed through the installed metadata).
"""
import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Imported only where the code says why it may be missing: the WebUI's own modules, an optional extra, and the
# browser driver of the real-WebUI tests (skipped without it).
NOT_DECLARED = {
    "modules": "the WebUI's own package (scripts/ and webui tests only)",
    "launch": "the WebUI's launcher, seen by install.py",
    "webui": "the WebUI's entry module",
    "tomli": "declared for Python < 3.11 only (3.11 reads TOML with tomllib); imported only there",
    "ldm_patched": "reForge's backend package, imported by webui/adapter.py only inside reForge",
    "bitsandbytes": "the optional [bnb] extra; --optimizer adamw8bit says how to install it",
    "selenium": "tests/webui/test_browser.py skips without it",
    "peft": "the optional [bench] extra: bench/lora.py's diffusers + peft comparison",
}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; (]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _declared(extras=("test", "ui")) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return {_name(r) for r in reqs}


def _closure(names: set[str]) -> set[str]:
    """The declared distributions and everything they require, as installed here."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r]
    return seen


def _imports() -> dict[str, str]:
    """Top-level module -> one file importing it (absolute imports only)."""
    local = {p.stem for p in ROOT.rglob("*.py")} | {p.name for p in ROOT.rglob("*") if p.is_dir()}
    found = {}
    files = [*ROOT.glob("extensions_builtin/**/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/*.py"),
             *ROOT.glob("scripts/*.py"), ROOT / "install.py"]
    for f in files:
        source = f.read_text()
        if "torch.onnx.export" in source:  # torch's exporter imports onnx lazily
            found.setdefault("onnx", str(f.relative_to(ROOT)))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for n in names:
                top = n.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local and top != "scal_sdt":
                    found.setdefault(top, str(f.relative_to(ROOT)))
    return found


def test_every_imported_module_is_declared():
    provided = _closure(_declared())
    by_module = md.packages_distributions()
    missing = []
    for module, where in sorted(_imports().items()):
        if module in NOT_DECLARED:
            continue
        dists = {_name(d) for d in by_module.get(module, [])}
        if not dists:
            missing.append(f"{module} (imported by {where}) is not installed here and not declared")
        elif not dists & provided:
            missing.append(f"{module} (imported by {where}) comes from {sorted(dists)}, which pyproject.toml "
                           f"does not declare (nor does anything it declares require it)")
    assert not missing, "\n".join(missing)


def test_the_check_sees_an_undeclared_module():
    """The check can fail: onnx is needed by torch.onnx.export and must be declared itself."""
    assert "onnx" in _imports()
    assert "onnx" in _declared()
    assert "definitely-not-a-dependency" not in _closure(_declared())
