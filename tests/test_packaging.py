"""The install paths the README promises stay consistent, and the package installs whole."""
import fnmatch
import importlib
import json
import re
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

import xmcviz
import xmcviz.cli
from xmcviz.data import registry

ROOT = Path(__file__).resolve().parents[1]
# pip name -> conda-forge name where they differ
CONDA_NAME = {"torch": "pytorch-gpu", "faiss-gpu": "faiss-gpu"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].strip().lower()


def test_environment_yml_covers_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {_name(d) for d in env["dependencies"] if isinstance(d, str)}
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    needed = [_name(r) for r in project["dependencies"] + project["optional-dependencies"]["gpu"]]
    missing = [n for n in needed if CONDA_NAME.get(n, n) not in conda]
    assert not missing, f"environment.yml lacks {missing}"
    assert "-e ." in pip
    assert not any(_name(d) == "faiss-cpu" for d in env["dependencies"] if isinstance(d, str)), \
        "faiss-cpu and faiss-gpu install the same module: never both"


def test_faiss_flavours_are_alternative_extras():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [_name(r) for r in extras["cpu"]] == ["faiss-cpu"]
    assert [_name(r) for r in extras["gpu"]] == ["faiss-gpu"]
    assert not any("faiss" in _name(r) for r in extras["test"])


def test_console_script_resolves_to_the_cli_main():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["xmcviz"].partition(":")
    main = getattr(importlib.import_module(module), attr)
    assert callable(main) and main is xmcviz.cli.main
    # The installed entry point (pip install -e .) is the same function.
    installed = entry_points(group="console_scripts", name="xmcviz")
    if not installed:
        pytest.skip("xmcviz is not installed in this environment")
    assert next(iter(installed)).load() is main


def test_every_package_directory_is_installed():
    """setuptools installs only directories with an ``__init__.py`` that ``packages.find``
    includes: a subpackage without one would be missing from a non-editable install."""
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    pkg = Path(xmcviz.__file__).resolve().parent
    dirs = {p.parent for p in pkg.rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(d.relative_to(pkg.parent)) for d in dirs if not (d / "__init__.py").is_file())
    assert missing == []
    names = [".".join(d.relative_to(pkg.parent).parts) for d in dirs]
    assert all(any(fnmatch.fnmatch(n, pat) for pat in include) for n in names)


def test_benchmark_table_needs_no_repository_file(tmp_path, monkeypatch):
    """An installed xmcviz has no ``data/benchmarks.json`` beside it: the table it reads ships in
    the package (the repository's copy is generated from it, see test_data_registry)."""
    monkeypatch.chdir(tmp_path)
    table = registry.benchmarks()
    assert {"Eurlex-4K", "Delicious", "Bibtex"} <= set(table)
    assert all(e["how_to_get"] and e["labels"] > 0 for e in table.values())
    assert json.loads(registry.to_json()) == table


def test_make_targets_named_in_the_readme_exist():
    readme = (ROOT / "README.md").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", readme))
    assert {"demo", "test"} <= named
    assert named <= targets, f"README names make targets the Makefile lacks: {named - targets}"
    assert re.search(r"^make test\b", (ROOT / ".ci" / "run").read_text(), re.M)
