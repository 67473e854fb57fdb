"""``gptcourse doctor``: one line per check, and a non-zero exit on any failure."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gptcourse import doctor

REPO = Path(__file__).resolve().parents[1]


def _pinned_names() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [
        r for extra in project["optional-dependencies"].values() for r in extra]
    return [r.split("==")[0].strip() for r in requirements]


def test_doctor_reports_every_dependency_and_passes(corpus_path):
    command = Path(sys.executable).parent / "gptcourse"
    env = {**os.environ, "GPTCOURSE_CORPUS": str(corpus_path)}

    result = subprocess.run([str(command), "doctor"], capture_output=True, text=True,
                            env=env, timeout=120)

    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    checks = lines[:-1]
    assert lines[-1].startswith("All checks passed")
    assert all(line.split()[0] in ("OK", "NOTE") for line in checks), result.stdout
    names = [line.split(maxsplit=1)[1].split(":")[0] for line in checks]
    assert names[0] == "python"
    assert sorted(n for n in names if n in _pinned_names()) == sorted(_pinned_names())
    assert any(line.startswith("OK    corpus: Tiny Shakespeare") for line in checks)
    assert any(line.startswith("OK    torch computation") for line in checks)


def test_a_missing_corpus_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTCOURSE_CORPUS", str(tmp_path / "missing.txt"))

    result = doctor.check_corpus()

    assert result.status == "FAIL" and "missing.txt" in result.detail


def test_run_exits_non_zero_when_a_check_fails(monkeypatch, capsys):
    failing = doctor.Result("FAIL", "torch", "version 1.0 installed, pinned 2.13.0")
    monkeypatch.setattr(doctor, "run_checks", lambda: [doctor.check_python(), failing])

    assert doctor.run(None) == 1
    out = capsys.readouterr().out
    assert "FAIL  torch: version 1.0 installed, pinned 2.13.0" in out
    assert "1 check(s) failed: torch" in out


@pytest.mark.parametrize("pin, status, words", [
    (doctor.Pin("torch", "2.13.0"), "OK", "2.13.0"),
    (doctor.Pin("torch", "0.0.1"), "FAIL", "pinned 0.0.1"),
    (doctor.Pin("no-such-package-gptcourse", "1.0"), "FAIL", "not installed"),
    (doctor.Pin("no-such-package-gptcourse", "1.0", optional=True), "NOTE", "not installed"),
])
def test_package_versions_must_equal_the_pin(pin, status, words):
    result = doctor.check_package(pin)

    assert result.status == status and words in result.detail


def test_pins_are_read_from_requirements():
    assert doctor.parse_pin("torch==2.13.0") == doctor.Pin("torch", "2.13.0")
    assert doctor.parse_pin('pytest-xdist==3.8.0; extra == "test"').optional
    assert doctor.parse_pin("numpy>=1.0") is None
    assert [p.name for p in doctor.pins()] == _pinned_names()


def test_the_torch_check_passes():
    assert doctor.check_torch().status == "OK"
