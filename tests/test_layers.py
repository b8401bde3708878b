"""The floors of the package, read from the source (every import, those inside functions too): host/ is the model
view and imports no feature; the sub-packages and top-level modules of scal_sdt import each other without a cycle;
only webui/ talks to the WebUI."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "extensions_builtin" / "scal_sdt"
#: what host/ may use besides itself: small helpers that import nothing of scal_sdt
HOST_MAY_USE = {"files", "demo_data"}


def unit(path: Path) -> str:
    """The sub-package (``host``) or top-level module (``cli``) a file belongs to."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imported_units(path: Path) -> set[str]:
    """The scal_sdt units ``path`` imports, relative or absolute, anywhere in the file."""
    package = list(path.relative_to(PACKAGE).parent.parts)  # the file's package below scal_sdt
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[list[str]] = []
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            module = node.module.split(".") if node.module else []
            names = [base + module] if module else [base + [alias.name] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "scal_sdt":
            module = node.module.split(".")[1:]
            names = [module] if module else [[alias.name] for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == "scal_sdt"]
        out |= {n[0] for n in names if n}
    return out


def graph() -> dict[str, set[str]]:
    units = {unit(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    edges: dict[str, set[str]] = {u: set() for u in units}
    for path in PACKAGE.rglob("*.py"):
        src = unit(path)
        if src == "__init__":
            continue
        edges[src] |= {u for u in imported_units(path) if u in units and u != src}
    return edges


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (a, b, ..., a), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(u):
        state[u] = 1
        path.append(u)
        for v in sorted(edges[u]):
            if state.get(v) == 1:
                return path[path.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        path.pop()
        state[u] = 2
        return None

    for u in sorted(edges):
        if u not in state and (found := visit(u)):
            return found
    return None


def test_the_graph_reader_sees_relative_lazy_and_absolute_imports(tmp_path):
    edges = graph()
    assert {"textual_inversion", "training", "host"} <= edges["runs"]  # module level
    assert "runs" in edges["cli"]  # only inside a function there
    assert "webui" in {unit(p) for p in PACKAGE.rglob("*.py")} and "host" in edges["webui"]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_host_is_the_model_view_and_imports_no_feature():
    used = graph()["host"]
    assert used <= HOST_MAY_USE, f"host/ imports {sorted(used - HOST_MAY_USE)}"
    for helper in HOST_MAY_USE:
        assert not graph()[helper], f"{helper} imports {sorted(graph()[helper])}"


def test_no_import_cycle_between_the_packages():
    found = cycle(graph())
    assert found is None, "import cycle: " + " -> ".join(found)


def test_only_webui_imports_the_webuis_modules():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else [])
            if any(m.split(".")[0] == "modules" for m in mods) and unit(path) != "webui":
                offenders.append(str(path.relative_to(PACKAGE)))
    assert not offenders


def test_the_loop_reads_its_options_as_fields():
    """No ``getattr(opts, "x", default)``: every option the loop uses is a field of TrainingOptions."""
    tree = ast.parse((PACKAGE / "training" / "loop.py").read_text(encoding="utf-8"))
    probes = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
              and n.func.id in ("getattr", "hasattr") and n.args and ast.unparse(n.args[0]) == "opts"]
    assert not probes
