"""The package layout draws the architecture: the training core never imports the notebook
layer, the batch runs or the CLI (they import the core, not the other way round)."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import xmcviz

PKG = Path(xmcviz.__file__).resolve().parent
#: Layers above the core: importing them from below turns the dependency around.
UPPER = ("xmcviz.notebook", "xmcviz.sweep", "xmcviz.cli")
#: The core side: these may import each other, never UPPER.
CORE = ("core", "data", "samplers", "hooks", "softmax", "validation.py")
#: The figures of the softmax setting are notebook-facing and may use the notebook layer.
CORE_EXEMPT = {"softmax/plots.py"}
MAX_TOP_LEVEL = 12


def module_name(path: Path, root: Path = PKG) -> str:
    """``xmcviz.a.b`` for ``root/a/b.py`` (``xmcviz.a`` for ``root/a/__init__.py``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([root.name, *parts])


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` (the text of ``module``) imports, with relative imports resolved.

    ``from a import b`` yields both ``a`` and ``a.b`` (``b`` may be a submodule), so
    ``from xmcviz import notebook`` is seen as an import of ``xmcviz.notebook``."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):  # walk: imports inside functions count too
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def violations(module: str, imports: set[str], upper: tuple[str, ...] = UPPER) -> list[str]:
    return sorted(f"{module} imports {name}" for name in imports
                  if any(name == up or name.startswith(up + ".") for up in upper))


def core_files() -> list[Path]:
    files: list[Path] = []
    for entry in CORE:
        p = PKG / entry
        files.extend([p] if p.is_file() else sorted(p.rglob("*.py")))
    return [f for f in files if f.relative_to(PKG).as_posix() not in CORE_EXEMPT]


def test_core_files_are_found():
    names = {module_name(f) for f in core_files()}
    assert {"xmcviz.core.trainer", "xmcviz.hooks.base", "xmcviz.samplers.mips",
            "xmcviz.data", "xmcviz.validation", "xmcviz.softmax.trainer"} <= names
    assert "xmcviz.softmax.plots" not in names


def test_import_resolution_catches_every_form():
    src = ("import xmcviz.notebook.live\n"
           "from xmcviz import cli\n"
           "from ...sweep import run_grid\n"
           "def f():\n    from ..notebook.plots import colour_for\n"
           "from .base import Hook\n")
    found = imported_modules(src, "xmcviz.hooks.sub.mod")
    assert {"xmcviz.notebook.live", "xmcviz.cli", "xmcviz.sweep", "xmcviz.hooks.notebook.plots",
            "xmcviz.hooks.sub.base"} <= found
    # `from ..notebook` inside xmcviz/hooks/sub/ is xmcviz.hooks.notebook, which is allowed;
    # from a module of xmcviz/hooks it is the notebook layer.
    assert imported_modules("from ..notebook import views\n", "xmcviz.hooks.ranks") >= {
        "xmcviz.notebook", "xmcviz.notebook.views"}
    assert imported_modules("from . import x\n", "xmcviz.core", is_package=True) == {
        "xmcviz.core", "xmcviz.core.x"}
    assert violations("m", found) == ["m imports xmcviz.cli", "m imports xmcviz.notebook.live",
                                      "m imports xmcviz.sweep", "m imports xmcviz.sweep.run_grid"]
    assert violations("m", {"xmcviz.notebooks_like", "xmcviz.core.cli_helpers"}) == []


def test_core_never_imports_the_notebook_layer_sweep_or_cli_statically():
    bad: list[str] = []
    for f in core_files():
        mod = module_name(f)
        bad += violations(mod, imported_modules(f.read_text(), mod, f.name == "__init__.py"))
    assert bad == []


def test_notebook_layer_never_imports_sweep_or_cli():
    # Batch runs drive notebooks, not the other way round.
    bad: list[str] = []
    files = sorted((PKG / "notebook").rglob("*.py")) + [PKG / "softmax" / "plots.py"]
    for f in files:
        mod = module_name(f)
        bad += violations(mod, imported_modules(f.read_text(), mod, f.name == "__init__.py"),
                          ("xmcviz.sweep", "xmcviz.cli"))
    assert bad == []


def test_importing_the_core_loads_no_upper_layer():
    # A fresh interpreter: this test process may already hold the notebook layer.
    entries = ["xmcviz.core.trainer", "xmcviz.softmax.trainer", "xmcviz.hooks", "xmcviz.samplers",
               "xmcviz.data"]
    # Also: importing the library leaves the process's warning filters alone (torch, scipy and
    # pandas are imported first, since they add their own).
    code = ("import sys, importlib, warnings, torch, scipy.sparse, pandas, numba\n"
            "before = list(warnings.filters)\n"
            f"for e in {entries!r}:\n    importlib.import_module(e)\n"
            f"print('\\n'.join(m for m in sys.modules if m.startswith({UPPER!r})))\n"
            "print('loaded', 'xmcviz.core.trainer' in sys.modules)\n"
            "print('filters', [f for f in warnings.filters if f not in before])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=PKG.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["loaded", "True", "filters", "[]"]


def test_the_package_has_few_top_level_entries():
    entries = sorted(p.name for p in PKG.iterdir() if p.name != "__pycache__")
    assert len(entries) <= MAX_TOP_LEVEL, entries


# --------------------------------------------------------------------------- a repository that stands alone
ROOT = PKG.parent
STANDALONE = ("xmcviz", "notebooks", "docs", "benchmarks", "tests", "README.md")
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".jsonl", ".json", ".txt", ".sh", ".toml", ".yml"}


def _text_files():
    for entry in STANDALONE:
        p = ROOT / entry
        for f in ([p] if p.is_file() else sorted(p.rglob("*"))):
            if f.is_file() and f.suffix in TEXT_SUFFIXES and "__pycache__" not in f.parts:
                yield f


def test_no_file_refers_outside_the_repository():
    # Built from parts, so that this file does not match itself.
    outside = ["/" + "work/", ".." + "/shared", "SPEC" + " section", "SPEC" + " 3.", "SPEC" + ".md"]
    hits = [f"{f.relative_to(ROOT)}: {s!r}" for f in _text_files()
            for s in outside if s in f.read_text(errors="replace")]
    assert hits == []


def test_links_to_the_background_page_resolve():
    text = (ROOT / "docs" / "background.md").read_text()
    headings = [h.strip() for h in re.findall(r"^#+ (.*)$", text, re.M)]
    anchors = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
    bad = []
    for f in _text_files():
        src = f.read_text(errors="replace")
        bad += [f"{f.relative_to(ROOT)}: #{a}" for a in re.findall(r"background\.md#([a-z0-9-]+)", src)
                if a not in anchors and a != "anchor"]
        # In code: the background page's section named in double quotes (may span a line break).
        bad += [f"{f.relative_to(ROOT)}: {n!r}" for n in
                re.findall(r'background\.md,\s+section\s+"([^"]+)"', src)
                if " ".join(n.split()) not in headings]
    assert bad == []


def test_design_doc_lists_every_module():
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    layout = design[design.index("## Layout"):design.index("## Contracts")]
    missing = sorted(str(f.relative_to(ROOT)) for f in PKG.rglob("*.py")
                     if "__pycache__" not in f.parts and f.name not in layout)
    assert missing == [], "add these to the Layout tree of docs/DESIGN.md (one line: what it owns)"
