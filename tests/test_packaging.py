"""The install paths the README promises stay consistent."""
import re
import tomllib
from pathlib import Path

import yaml

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


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci
    assert "make demo" in readme
