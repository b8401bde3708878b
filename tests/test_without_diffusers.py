"""A stock A1111 venv has no diffusers: every module the WebUI side imports (webui/ and scripts/, followed through
their imports within the package) loads without it. The real-WebUI tests then run the features in such a venv."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "extensions_builtin" / "scal_sdt"


def _module_of(path: Path) -> str:
    if PACKAGE.parent not in path.parents:  # a WebUI script: a top-level module of its own
        return path.stem
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _load_time_nodes(tree):
    """The statements that run when the module is imported (function bodies run later, when called: the lazy
    imports of standalone-only paths, such as the Forge copy of a checkpoint, are not followed)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


def _imports(path: Path) -> set[str]:
    """scal_sdt modules a file imports when it is loaded (absolute and relative)."""
    here = _module_of(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in _load_time_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n.startswith("scal_sdt")}
    return found


def _file_of(module: str) -> Path | None:
    rel = Path(*module.split("."))
    for candidate in (PACKAGE.parent / rel.with_suffix(".py"), PACKAGE.parent / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def webui_side_modules() -> set[str]:
    todo = [p for p in (PACKAGE / "webui").glob("*.py")] + list((ROOT / "scripts").glob("*.py"))
    seen: set[str] = set()
    for path in todo:
        for module in _imports(path):
            file = _file_of(module)
            if file is not None and module not in seen:
                seen.add(module)
                todo.append(file)
    return {m for m in seen if not m.startswith("scal_sdt.webui")}  # those import the WebUI's own modules


def test_the_webui_side_imports_without_diffusers():
    modules = sorted(webui_side_modules())
    assert "scal_sdt.runs" in modules and "scal_sdt.textual_inversion.trainer" in modules  # the walk can see
    code = ("import importlib, sys\nsys.modules['diffusers'] = None\nbad = []\n"
            f"for m in {modules!r}:\n"
            "    try:\n        importlib.import_module(m)\n"
            "    except Exception as e:\n        bad.append(f'{m}: {e!r}')\n"
            "print('\\n'.join(bad))\nsys.exit(1 if bad else 0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
