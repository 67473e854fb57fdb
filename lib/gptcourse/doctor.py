"""``gptcourse doctor``: is this machine ready for the course?

Prints one line per check, starting with ``OK`` or ``FAIL`` (``NOTE`` for an optional
package that is not installed): the Python version, every pinned package (installed at
exactly the pinned version, and importable), the corpus, and a tiny torch computation
with a gradient. Exits 1 when any check fails.
"""

import argparse
import importlib
import importlib.metadata
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

HELP = "check that every dependency, the corpus and torch work; exit 1 on any FAIL"

PYTHON = (3, 11)

# Distribution name -> module to import, where the two differ.
IMPORT_NAMES = {
    "pytest-xdist": "xdist",
    "pytest-timeout": "pytest_timeout",
}

_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;,]+)\s*(;.*)?$")


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    optional: bool = False


@dataclass(frozen=True)
class Result:
    status: str  # "OK", "FAIL" or "NOTE"
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<5} {self.name}: {self.detail}"


def _pyproject() -> Path | None:
    # An editable install (the course's own setup) runs from the repository: read the
    # pins from pyproject.toml there, so a changed pin shows up before re-installing.
    candidate = Path(__file__).resolve().parents[2] / "pyproject.toml"
    return candidate if candidate.is_file() else None


def parse_pin(requirement: str, optional: bool = False) -> Pin | None:
    """``"torch==2.13.0"`` -> Pin("torch", "2.13.0"); None for a requirement without ``==``."""
    match = _PIN.match(requirement)
    if not match:
        return None
    marker = match.group(3) or ""
    return Pin(match.group(1), match.group(2), optional or "extra" in marker)


def pins() -> list[Pin]:
    """Every ``name==version`` requirement of gptcourse, the test extras marked optional."""
    path = _pyproject()
    if path is not None:
        project = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
        found = [parse_pin(r) for r in project.get("dependencies", [])]
        for extra in project.get("optional-dependencies", {}).values():
            found += [parse_pin(r, optional=True) for r in extra]
    else:
        found = [parse_pin(r) for r in importlib.metadata.requires("gptcourse") or []]
    return [pin for pin in found if pin is not None]


def check_python() -> Result:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] == PYTHON:
        return Result("OK", "python", version)
    wanted = ".".join(map(str, PYTHON))
    return Result("FAIL", "python", f"{version}, the course needs Python {wanted}")


def check_package(pin: Pin) -> Result:
    """Installed at exactly the pinned version, and importable."""
    try:
        installed = importlib.metadata.version(pin.name)
    except importlib.metadata.PackageNotFoundError:
        if pin.optional:
            return Result("NOTE", pin.name, f"not installed (only the test suite needs it; "
                                            f"pinned {pin.version})")
        return Result("FAIL", pin.name, f"not installed, pinned {pin.version}; run `make setup`")

    # Local version labels such as torch's "+cpu" name the build, not the release.
    if installed.split("+")[0] != pin.version:
        return Result("FAIL", pin.name, f"version {installed} installed, pinned {pin.version}; "
                                        "run `make clean setup` to reinstall")

    module = IMPORT_NAMES.get(pin.name, pin.name.replace("-", "_"))
    try:
        importlib.import_module(module)
    except Exception as err:  # a broken install can raise anything on import
        return Result("FAIL", pin.name, f"version {installed} installed but `import {module}` "
                                        f"fails: {err!r}")
    return Result("OK", pin.name, installed)


def check_corpus() -> Result:
    from gptcourse.data import corpus_status

    ok, detail = corpus_status()
    return Result("OK" if ok else "FAIL", "corpus", detail)


def check_torch() -> Result:
    """A matrix product and one gradient, checked against values worked out by hand."""
    try:
        import torch

        x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
        y = x @ torch.tensor([[1.0], [1.0]])  # (2, 1) row sums: 3 and 7
        (y ** 2).sum().backward()  # d/dx_ij of sum_i (row sum_i)^2 = 2 * row sum_i
        expected_grad = torch.tensor([[6.0, 6.0], [14.0, 14.0]])
        if not (torch.equal(y.detach(), torch.tensor([[3.0], [7.0]]))
                and torch.equal(x.grad, expected_grad)):
            return Result("FAIL", "torch computation", "a 2x2 matrix product or its gradient "
                                                       "came out wrong")
        return Result("OK", "torch computation",
                      f"matmul and backward on CPU ({torch.get_num_threads()} threads)")
    except Exception as err:
        return Result("FAIL", "torch computation", repr(err))


def run_checks() -> list[Result]:
    results = [check_python()]
    results += [check_package(pin) for pin in pins()]
    results.append(check_corpus())
    results.append(check_torch())
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``gptcourse doctor`` takes no options."""


def run(args: argparse.Namespace) -> int:
    results = run_checks()
    for result in results:
        print(result.line(), flush=True)

    failed = [r for r in results if r.status == "FAIL"]
    if failed:
        print(f"\n{len(failed)} check(s) failed: " + ", ".join(r.name for r in failed))
        return 1
    print("\nAll checks passed: the course is ready.")
    return 0
