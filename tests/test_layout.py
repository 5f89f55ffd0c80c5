"""The package's layout stays layered: no import cycle (imports inside functions included), the import-linter
layers contract kept, no source file over 500 lines, no module importing another's private name, and only the
package's entry point importing the catalogue that registers the stages."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "instar"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) of every import in the file, at any depth."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            out += [(target, a.name) for a in node.names]
    return out


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for m, path in modules.items():
        for target, name in imports_of(path):
            for cand in (f"{target}.{name}" if name else None, target):  # `from pkg import module` or a name
                if cand in modules and cand != m:
                    edges[m].add(cand)
                    break
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules_counting_imports_inside_functions():
    edges = graph()
    assert len(edges) > 60 and edges["instar.search.pipeline"], "the import graph was not read"
    assert cycles(edges) == []


def test_the_layers_contract_holds():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is not installed (pip install -e '.[test]')"
    run = subprocess.run([exe], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 kept, 0 broken" in run.stdout


def test_no_source_file_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}


def test_no_module_imports_another_modules_private_name():
    private = [(module_name(p), target, name) for p in PACKAGE.rglob("*.py") for target, name in imports_of(p)
               if target and target.startswith("instar") and name and name.startswith("_") and name != "__version__"]
    assert private == []


@pytest.mark.parametrize("module", ["catalog"])
def test_only_the_entry_point_imports_the_catalogue(module):
    importers = sorted(module_name(p) for p in PACKAGE.rglob("*.py")
                       if any(t == f"instar.{module}" or (t == "instar" and n == module) for t, n in imports_of(p)))
    assert importers == ["instar"]
