"""The two ways to install the course, pyproject.toml (pip) and environment.yml (conda),
pin the same versions."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# conda-forge package -> the PyPI distribution it provides, where the names differ.
CONDA_TO_PYPI = {"matplotlib-base": "matplotlib"}


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _environment() -> dict:
    return yaml.safe_load((REPO / "environment.yml").read_text(encoding="utf-8"))


def _requirement(text: str) -> tuple[str, str]:
    match = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*(==?)\s*([^\s;]+)\s*(;.*)?", text)
    assert match, f"{text!r} is not pinned to an exact version"
    return match.group(1).lower(), match.group(3)


def _pyproject_pins() -> dict[str, str]:
    project = _project()
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins = [_requirement(r) for r in requirements]
    for r in requirements:
        assert "==" in r, f"pyproject.toml: {r!r} must be pinned with =="
    return dict(pins)


def _environment_pins() -> tuple[dict[str, str], list[str]]:
    """(PyPI name -> version for every pinned package, the other pip lines)."""
    pins, others = {}, []
    for dependency in _environment()["dependencies"]:
        if isinstance(dependency, dict):
            for line in dependency["pip"]:
                if line.startswith("-"):
                    others.append(line)
                else:
                    name, version = _requirement(line)
                    pins[name] = version
            continue
        if re.match(r"(python|pip)\b", dependency):
            continue
        assert "==" in dependency, f"environment.yml: {dependency!r} must be pinned with =="
        name, version = _requirement(dependency)
        pins[CONDA_TO_PYPI.get(name, name)] = version
    return pins, others


def _environment_python() -> str:
    for dependency in _environment()["dependencies"]:
        if isinstance(dependency, str) and dependency.startswith("python"):
            return _requirement(dependency)[1]
    raise AssertionError("environment.yml does not pin python")


def test_both_files_pin_the_same_versions():
    pyproject = _pyproject_pins()
    environment, _ = _environment_pins()

    disagree = {name: (pyproject.get(name), environment.get(name))
                for name in set(pyproject) | set(environment)
                if pyproject.get(name) != environment.get(name)}
    assert not disagree, f"(pyproject.toml, environment.yml) versions differ: {disagree}"


def test_torch_is_pinned_to_the_cpu_friendly_release():
    assert _pyproject_pins()["torch"] == "2.13.0"
    assert _environment_pins()[0]["torch"] == "2.13.0"


def test_python_is_3_11_in_both():
    assert _project()["requires-python"] == ">=3.11,<3.12"
    assert _environment_python() == "3.11"


def test_conda_uses_conda_forge_only_and_installs_the_course():
    environment = _environment()

    assert environment["channels"] == ["conda-forge", "nodefaults"]
    _, others = _environment_pins()
    assert any(re.fullmatch(r"-e \.(\[test\])?", line) for line in others), others
