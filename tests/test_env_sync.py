"""environment.yml (conda route) and pyproject.toml (pip route) list the same runtime dependencies.

Names are compared PEP 503-normalised, with conda's ``pytorch`` for pip's ``torch``; each package must appear on
both sides with the same lower bound (``>=``). environment.yml may list a package in its conda section or in its
``pip:`` section. Ignored there: ``python``, ``pip`` and the ``-e .[dev]`` line.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - CI and the venv run 3.11
    tomllib = pytest.importorskip("tomli")
yaml = pytest.importorskip("yaml")
from packaging.requirements import Requirement  # noqa: E402
from packaging.specifiers import SpecifierSet  # noqa: E402
from packaging.version import Version  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch"}
IGNORED = {"python", "pip"}


def normalise(name: str) -> str:
    name = re.sub(r"[-_.]+", "-", name).lower()  # PEP 503
    return CONDA_TO_PIP.get(name, name)


def lower_bound(spec: str) -> str | None:
    """The version after ``>=`` in a pip or conda spec string (PEP 440-normalised), or None."""
    m = re.search(r">=\s*([0-9][0-9A-Za-z.*+!-]*)", spec)
    return str(Version(m.group(1))) if m else None


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def pyproject_deps() -> dict[str, str | None]:
    out = {}
    for line in pyproject()["project"]["dependencies"]:
        req = Requirement(line)
        out[normalise(req.name)] = lower_bound(str(req.specifier))
    return out


def _conda_spec(entry: str) -> tuple[str, str]:
    # conda match specs: "name", "name>=1.2", "name 1.2.*", "name=1.2", "channel::name>=1"
    entry = entry.split("::")[-1].strip()
    m = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", entry)
    assert m, f"cannot parse conda dependency {entry!r}"
    return m.group(1), m.group(2)


def environment_deps() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for entry in environment()["dependencies"]:
        if isinstance(entry, dict):
            assert set(entry) == {"pip"}, f"unexpected mapping in environment.yml dependencies: {entry}"
            for line in entry["pip"]:
                line = line.strip()
                if line.startswith("-e") or line.startswith("--"):
                    continue  # the project itself (-e .[dev]) and pip options
                req = Requirement(line)
                name = normalise(req.name)
                assert name not in out, f"{name} is listed twice in environment.yml"
                out[name] = lower_bound(str(req.specifier))
            continue
        name, spec = _conda_spec(str(entry))
        if name.lower() in IGNORED:
            continue
        name = normalise(name)
        assert name not in out, f"{name} is listed twice in environment.yml"
        out[name] = lower_bound(spec)
    return out


def test_same_packages_both_ways():
    py, env = pyproject_deps(), environment_deps()
    only_py = sorted(set(py) - set(env))
    only_env = sorted(set(env) - set(py))
    assert not only_py, f"in pyproject.toml [project.dependencies] but not in environment.yml: {only_py}"
    assert not only_env, f"in environment.yml but not in pyproject.toml [project.dependencies]: {only_env}"


def test_same_lower_bounds():
    py, env = pyproject_deps(), environment_deps()
    diff = {k: (py[k], env[k]) for k in sorted(set(py) & set(env)) if py[k] != env[k]}
    assert not diff, f"lower bounds differ (pyproject, environment.yml): {diff}"


def test_environment_python_satisfies_requires_python():
    requires = SpecifierSet(pyproject()["project"]["requires-python"])
    pythons = [_conda_spec(str(e)) for e in environment()["dependencies"] if isinstance(e, str)]
    pythons = [spec for name, spec in pythons if name == "python"]
    assert len(pythons) == 1, "environment.yml must pin python exactly once (e.g. python=3.11)"
    version = re.sub(r"^[=\s]+", "", pythons[0]).rstrip(".*")
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", version), f"use python=X.Y in environment.yml, got {pythons[0]!r}"
    assert requires.contains(version), f"environment.yml python {version} does not satisfy requires-python {requires}"


def test_environment_installs_the_project_with_dev_extras():
    pip_lines = [line.replace(" ", "") for e in environment()["dependencies"] if isinstance(e, dict)
                 for line in e["pip"]]
    assert "-e.[dev]" in pip_lines, "environment.yml's pip section should end with `-e .[dev]`"
    assert "dev" in pyproject()["project"]["optional-dependencies"]


def test_cpu_constraint_satisfies_torch_range():
    """constraints-cpu.txt pins the CPU wheel; it must stay inside pyproject's torch range."""
    pins = {}
    for line in (ROOT / "constraints-cpu.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[normalise(req.name)] = req.specifier
    assert "torch" in pins, "constraints-cpu.txt must pin torch (else pip fetches a multi-GB CUDA build)"
    pinned = [s.version for s in pins["torch"] if s.operator == "=="]
    assert pinned, "pin torch exactly (torch==X.Y.Z) in constraints-cpu.txt"
    torch_range = next(Requirement(d).specifier for d in pyproject()["project"]["dependencies"]
                       if normalise(Requirement(d).name) == "torch")
    assert torch_range.contains(pinned[0]), f"torch=={pinned[0]} is outside pyproject's torch{torch_range}"
