"""Grid and parameter typing: a notebook's ``parameters`` cell, command-line values parsed as the
notebook's types, the cross product, folder names (slugs) and the ``done`` markers of resume.

``<slug>`` reads ``name=value__name=value`` in grid order (e.g. ``sampler=mips-s__ppe=4``);
characters outside ``[A-Za-z0-9._@+-]`` become ``-`` and then a short hash of the exact value
is appended, so distinct values never share a folder; a slug over 100 characters is cut and
ends with a hash of the whole.
"""
from __future__ import annotations

import ast
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

NOTEBOOK_FILE = "notebook.ipynb"
DONE_FILE = "done"
KERNEL_LOG = "kernel.log"
OUTPUT_DIR_PARAM = "output_dir"
MAX_SLUG_LEN = 100

_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]+")

class SweepError(ValueError):
    """Bad sweep arguments, detected before anything runs (the CLI exits with status 2)."""


# --------------------------------------------------------------------------- notebook parameters

@dataclass(frozen=True)
class NotebookParameter:
    """One assignment of a notebook's ``parameters`` cell.

    ``kind`` is the type values are parsed as: ``int``, ``float``, ``bool``, ``str`` (from the
    annotation if any, else from the default's literal), or ``any`` (``None`` default, lists,
    expressions: values go through ``ast.literal_eval`` with the plain string as fallback).
    """

    name: str
    kind: str
    default: str


def _kind_of(type_name: str, default: str) -> str:
    if type_name in ("int", "float", "bool", "str"):
        return type_name
    try:
        value = ast.literal_eval(default)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return "any"
    # bool before int: bool is a subclass of int.
    for kind, cls in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(value, cls):
            return kind
    return "any"


def notebook_parameters(notebook: str | Path) -> dict[str, NotebookParameter]:
    """The parameters declared in ``notebook``'s ``parameters`` cell, by name.

    Raises :class:`SweepError` when the notebook is missing, has no ``parameters`` cell, or
    declares no ``output_dir`` (the sweep needs it to collect results).
    """
    path = Path(notebook)
    if not path.is_file():
        raise SweepError(f"notebook {str(path)!r} does not exist")
    import papermill as pm

    try:
        info = pm.inspect_notebook(str(path))
    except ValueError as e:
        if "kernel name" in str(e):  # papermill needs metadata.kernelspec to pick a translator
            raise SweepError(f"notebook {str(path)!r} names no kernel (metadata.kernelspec): "
                             "open it in JupyterLab, select a kernel and save") from None
        raise SweepError(f"cannot read notebook {str(path)!r}: {type(e).__name__}: {e}") from None
    except Exception as e:  # unreadable JSON, not a notebook, ...
        raise SweepError(f"cannot read notebook {str(path)!r}: {type(e).__name__}: {e}") from None
    if not info:
        raise SweepError(f"notebook {str(path)!r} has no cell tagged 'parameters' "
                         "(or papermill found no assignments in it)")
    params = {name: NotebookParameter(name, _kind_of(p["inferred_type_name"], p["default"]),
                                      p["default"])
              for name, p in info.items()}
    if OUTPUT_DIR_PARAM not in params:
        raise SweepError(f"notebook {str(path)!r} has no '{OUTPUT_DIR_PARAM}' parameter; "
                         f"its parameters are {sorted(params)}")
    return params


def parse_value(param: NotebookParameter, text: str) -> Any:
    """Parse a command-line string as a value of ``param``'s kind (see :class:`NotebookParameter`).

    ``None`` is accepted for every kind but ``str``. Raises :class:`SweepError` naming the value.
    """
    s = text.strip()
    if param.kind != "str" and s == "None":
        return None
    bad = SweepError(f"{param.name}={text!r} is not a valid {param.kind} "
                     f"(the notebook's default is {param.name} = {param.default})")
    if param.kind == "int":
        try:
            return int(s)
        except ValueError:
            raise bad from None
    if param.kind == "float":
        try:
            return float(s)
        except ValueError:
            raise bad from None
    if param.kind == "bool":
        low = s.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise bad
    if param.kind == "str":
        return text
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text  # a bare word such as mips-s


def _check_json_value(param: NotebookParameter, value: Any) -> Any:
    """Type-check a non-string element of a JSON list given on the command line."""
    if value is None or param.kind == "any":
        return value
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "bool": isinstance(value, bool),
          "str": False}[param.kind]
    if not ok:
        raise SweepError(f"{param.name}={json.dumps(value)} is not a valid {param.kind} "
                         f"(the notebook's default is {param.name} = {param.default})")
    return float(value) if param.kind == "float" else value


def _unknown_name_error(name: str, params: Mapping[str, NotebookParameter], what: str) -> SweepError:
    allowed = sorted(n for n in params if n != OUTPUT_DIR_PARAM)
    return SweepError(f"unknown {what} {name!r}: the notebook's parameters cell allows "
                      f"{allowed} (papermill skips assignments it cannot parse, e.g. lines "
                      "holding two '=' signs, comments included)")


def _split_assignment(text: str, what: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise SweepError(f"{what} {text!r} must look like NAME=VALUE")
    return name, value


def parse_grid_args(items: Iterable[str],
                    params: Mapping[str, NotebookParameter]) -> dict[str, list[Any]]:
    """Parse ``--grid`` strings into a grid.

    ``name=v1,v2,...`` splits on commas (whitespace around values is stripped); a value holding a
    comma is given with JSON list syntax, ``name=["a,b", "c"]``, whose string elements are parsed
    like the comma form and whose other elements are type-checked against the default.
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, raw = _split_assignment(item, "--grid")
        if name not in params or name == OUTPUT_DIR_PARAM:
            raise _unknown_name_error(name, params, "grid name")
        if name in grid:
            raise SweepError(f"grid name {name!r} is given twice")
        p = params[name]
        if raw.lstrip().startswith("["):
            try:
                elements = json.loads(raw)
            except json.JSONDecodeError as e:
                raise SweepError(f"--grid {item!r}: not a JSON list ({e})") from None
            if not isinstance(elements, list):
                raise SweepError(f"--grid {item!r}: not a JSON list")
            values = [parse_value(p, e) if isinstance(e, str) else _check_json_value(p, e)
                      for e in elements]
        else:
            texts = raw.split(",")
            if any(not t.strip() for t in texts):
                raise SweepError(f"--grid {item!r} has an empty value")
            values = [parse_value(p, t) for t in texts]
        if not values:
            raise SweepError(f"--grid {item!r} has no values")
        grid[name] = values
    return grid


def parse_param_args(items: Iterable[str],
                     params: Mapping[str, NotebookParameter]) -> dict[str, Any]:
    """Parse ``--param name=value`` strings (one value each; commas are part of the value)."""
    fixed: dict[str, Any] = {}
    for item in items:
        name, raw = _split_assignment(item, "--param")
        if name not in params or name == OUTPUT_DIR_PARAM:
            raise _unknown_name_error(name, params, "parameter")
        if name in fixed:
            raise SweepError(f"parameter {name!r} is given twice")
        fixed[name] = parse_value(params[name], raw)
    return fixed


# --------------------------------------------------------------------------- slugs and markers

def _short_hash(text: str, n: int) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def slug_for(combo: Mapping[str, Any]) -> str:
    """Folder name of one combination: stable, readable and filesystem-safe."""
    if not combo:
        return "default"
    parts = []
    for name, value in combo.items():
        text = _value_text(value)
        safe = _UNSAFE.sub("-", text).strip("-.")  # no leading "." (hidden folders, "..")
        if safe != text or not safe:
            # Lossy: tag with the exact value's hash so "a b" and "a/b" get different folders.
            safe = f"{safe}-{_short_hash(text, 6)}" if safe else _short_hash(text, 6)
        parts.append(f"{name}={safe}")
    slug = "__".join(parts)
    if len(slug) > MAX_SLUG_LEN:
        slug = f"{slug[:MAX_SLUG_LEN - 12].rstrip('-_.=')}__{_short_hash(slug, 10)}"
    return slug


def canonical_params(params: Mapping[str, Any]) -> Any:
    """Parameter values as they round-trip through JSON, for comparing with a marker."""
    return json.loads(json.dumps({k: v for k, v in params.items() if k != OUTPUT_DIR_PARAM},
                                 sort_keys=True, default=repr))


def read_done(run_dir: str | Path, params: Mapping[str, Any]) -> dict | None:
    """The ``done`` marker of a finished combination run with ``params``, else None."""
    from ..core.rundir import RESULTS_FILE  # here: workers import this module without torch

    run_dir = Path(run_dir)
    if not (run_dir / RESULTS_FILE).is_file():
        return None
    try:
        marker = json.loads((run_dir / DONE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("params") != canonical_params(params):
        return None
    return marker


def validate_grid(grid: Mapping[str, Sequence[Any]], params: Mapping[str, Any],
                  declared: Mapping[str, NotebookParameter]) -> dict[str, list[Any]]:
    """Check ``grid`` and fixed ``params`` against the notebook's parameters; the grid with each
    value list as a list (any iterable but a string is accepted)."""
    grid = {name: values if isinstance(values, (str, bytes, Mapping)) or
            not isinstance(values, Iterable) else list(values) for name, values in grid.items()}
    for name, values in grid.items():
        if name not in declared or name == OUTPUT_DIR_PARAM:
            raise _unknown_name_error(name, declared, "grid name")
        if not isinstance(values, list):
            raise SweepError(f"grid[{name!r}] must be a list of values, got {values!r}")
        if len(values) == 0:
            raise SweepError(f"grid[{name!r}] has no values")
    for name in params:
        if name not in declared or name == OUTPUT_DIR_PARAM:
            raise _unknown_name_error(name, declared, "parameter")
        if name in grid:
            raise SweepError(f"{name!r} is both a grid name and a fixed parameter")
    return grid


def combinations(grid: Mapping[str, Sequence[Any]]) -> list[tuple[str, dict[str, Any]]]:
    """``(slug, combination)`` for the cross product of ``grid``, in grid order; raises
    :class:`SweepError` when two combinations would share a folder."""
    names = list(grid)
    out: list[tuple[str, dict[str, Any]]] = []
    seen: dict[str, dict] = {}
    for values in itertools.product(*grid.values()):
        combo = dict(zip(names, values))
        slug = slug_for(combo)
        if slug in seen:
            raise SweepError(f"combinations {seen[slug]} and {combo} map to the same folder "
                             f"{slug!r} (duplicate grid values?)")
        seen[slug] = combo
        out.append((slug, combo))
    return out
