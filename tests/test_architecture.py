"""The package's architecture, enforced: the library, the book above it and the compatibility layer above both, no
import cycles, chapters in dependency order, and imports without side effects on JAX or on what gets loaded."""
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "opt_lab"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__": parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py")) if p.name != "_modidx.py"}
BOOK = sorted(m for m in MODULES if m.startswith("opt_lab.book"))
COMPAT = sorted(m for m in MODULES if m.startswith("opt_lab.compat"))
LIBRARY = sorted(m for m in MODULES if m not in BOOK and m not in COMPAT)


def _resolve(module: str, node: ast.ImportFrom) -> str:
    "The absolute name a (possibly relative) `from … import` refers to."
    if not node.level: return node.module or ""
    package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> set[str]:
    "Every opt_lab module that `module` imports, at module level or inside functions (lazy imports count)."
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import): names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        else: continue
        found.update(n for n in names if n in MODULES and n != module)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _is_namespace(module: str) -> bool:
    "A module made only of imports, its `_all_` list and module aliases (the `opt_lab.optim`, `opt_lab.mice`, `opt_lab.em` namespaces)."
    body = ast.parse(MODULES[module].read_text()).body
    def trivial(node):
        if isinstance(node, (ast.Import, ast.ImportFrom)): return True
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant): return True  # the docstring
        if isinstance(node, ast.Expr) and getattr(getattr(node.value, "func", None), "id", "") == "alias_modules":
            return True  # another library's module paths, registered as aliases of the chapters' modules
        return isinstance(node, ast.Assign) and all(getattr(t, "id", "") in ("_all_", "__all__") for t in node.targets)
    return bool(body) and all(trivial(n) for n in body)


def test_the_package_has_both_layers():
    assert {"opt_lab.core", "opt_lab.optim", "opt_lab.mice", "opt_lab.em"} <= set(LIBRARY)
    assert {"opt_lab.book.display", "opt_lab.book.problems", "opt_lab.book.optim_race"} <= set(BOOK)
    assert {"opt_lab.compat.jaxopt", "opt_lab.compat.mice"} <= set(COMPAT)


@pytest.mark.parametrize("module", LIBRARY + BOOK)
def test_nothing_below_imports_the_compatibility_layer(module):
    assert not [n for n in GRAPH[module] if n.startswith("opt_lab.compat")], f"{module} imports the compatibility layer"


def test_no_import_cycles():
    state = {}
    def visit(m, stack):
        state[m] = "open"
        for n in GRAPH[m]:
            if state.get(n) == "open": pytest.fail("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state: visit(n, stack + [n])
        state[m] = "done"
    for m in MODULES:
        if m not in state: visit(m, [m])


@pytest.mark.parametrize("module", LIBRARY)
def test_library_never_imports_the_book(module):
    assert not [n for n in GRAPH[module] if n.startswith("opt_lab.book")], f"{module} imports the book layer"


@pytest.mark.parametrize("module", LIBRARY)
def test_no_benchmark_or_explorer_in_the_library(module):
    tree = ast.parse(MODULES[module].read_text())
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    book_like = [n for n in names if n.startswith("bench") or n.endswith("explorer") or n == "Explorer"
                 or n.startswith("plot_") and module != "opt_lab.mice.plot"]
    assert not book_like, f"{module} defines book code: {book_like}"


_FRESH_IMPORT = """
import importlib, json, sys
import jax
before = {k: repr(v) for k, v in jax.config.values.items()}
for name in sys.argv[1:]: importlib.import_module(name)
after = {k: repr(v) for k, v in jax.config.values.items()}
print(json.dumps(dict(changed=sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k)),
                      loaded=sorted(m for m in ("matplotlib", "ipywidgets", "pandas", "IPython") if m in sys.modules))))
"""


def _fresh_import(*modules) -> dict:
    out = subprocess.run([sys.executable, "-c", _FRESH_IMPORT, *modules], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_library_loads_no_plotting_widget_or_table_code():
    result = _fresh_import(*LIBRARY, *COMPAT)  # the compatibility modules import the book lazily, if at all
    assert result["loaded"] == [], f"importing the library loaded {result['loaded']}"


@pytest.mark.parametrize("module", ["opt_lab.em", "opt_lab.mice", "opt_lab.optim", "opt_lab.book.em_family_tutorial",
                                    "opt_lab.book.mice_logistic"])
def test_import_leaves_jax_config_unchanged(module):
    assert _fresh_import(module)["changed"] == []


def test_no_module_changes_jax_config():
    assert _fresh_import(*MODULES)["changed"] == []


def test_em_refuses_float32_with_a_message_naming_the_fix():
    code = ("import jax, numpy as np\nfrom opt_lab.em import NormalInverseGaussian\n"
            "assert not jax.config.jax_enable_x64\n"
            "try: NormalInverseGaussian.default_init(np.ones((5, 2)))\n"
            "except RuntimeError as e: print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "jax.config.update('jax_enable_x64', True)" in out


def _chapter(module: str) -> str:
    "The notebook a module is exported from (the header nbdev writes)."
    match = re.search(r"File to edit: [./]*nbs/([\w./-]+\.ipynb)", MODULES[module].read_text())
    assert match, f"{module} has no nbdev header"
    return match.group(1)


def _number(notebook: str) -> int:
    return int(re.match(r"(\d+)", Path(notebook).name).group(1))


@pytest.mark.parametrize("module", [m for m in MODULES if m != "opt_lab"])
def test_chapters_are_in_dependency_order(module):
    "A chapter only imports what earlier chapters export; a namespace chapter may gather any chapter's names."
    if _is_namespace(module): return
    later = [n for n in GRAPH[module] if n != "opt_lab" and _number(_chapter(n)) > _number(_chapter(module))]
    assert not later, f"{module} ({_chapter(module)}) imports later chapters: {[(n, _chapter(n)) for n in later]}"


def test_every_notebook_exports_at_most_its_own_module():
    "Secondary `#| export <module>` targets append on every `nbdev_export`: each chapter exports one module."
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        for cell in cells:
            first = "".join(cell["source"]).split("\n", 1)[0]
            assert not re.match(r"#\|\s*export\s+\S", first), f"{nb.name} exports to a second module: {first}"


@pytest.mark.parametrize("notebook", sorted(p.name for p in (ROOT / "nbs").glob("*.ipynb")))
def test_no_show_doc_that_nbdev_inserts_anyway(notebook):
    "nbdev documents every public exported definition (a `patch_to` method as `Class.method`): no explicit second copy."
    from collections import Counter
    from nbdev.process import NBProcessor
    from nbdev.processors import add_show_docs
    proc = NBProcessor(ROOT / "nbs" / notebook, procs=[add_show_docs])
    proc.process()
    shown = Counter(m.group(1) for cell in proc.nb.cells if cell.cell_type == "code"
                    for m in re.finditer(r"^show_doc\(([\w.]+)", cell.source, re.M))
    assert not [name for name, count in shown.items() if count > 1], f"{notebook}: documented twice: {shown}"


@pytest.mark.parametrize("notebook", sorted(p.name for p in (ROOT / "nbs").glob("*.ipynb")))
def test_code_cells_stay_short(notebook):
    "The book teaches in pieces: a long definition is split across cells (`patch_to`), each with its prose and example."
    cells = json.loads((ROOT / "nbs" / notebook).read_text())["cells"]
    long = [(i, len("".join(c["source"]).splitlines())) for i, c in enumerate(cells)
            if c["cell_type"] == "code" and len("".join(c["source"]).splitlines()) > 65]
    assert not long, f"{notebook}: code cells (index, lines) over 65 lines: {long}"
