"""requirements/lock.txt pins every package the project declares, within the declared ranges, and
is what the test environment holds (a venv that drifted from the lock would test other code)."""

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"

# The lock's reader is scripts/check_lock.py's (what bootstrap runs), not a second copy.
_spec = importlib.util.spec_from_file_location("check_lock", ROOT / "scripts" / "check_lock.py")
check_lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_lock)
_name, _pins = check_lock.normalise, check_lock.read_pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for name in ("dev", "eval") for r in extras[name]]
    return [r for r in reqs if _name(r.name) != "twotower-train"]


def test_lock_pins_every_declared_dependency_within_its_range():
    pins = _pins(LOCK)
    missing = [str(r) for r in _declared() if _name(r.name) not in pins]
    assert not missing, f"not in the lock (bash scripts/lock.sh): {missing}"
    outside = [
        f"{r} (locked {pins[_name(r.name)]})"
        for r in _declared()
        if not r.specifier.contains(pins[_name(r.name)], prereleases=True)
    ]
    assert not outside, f"locked outside the declared range: {outside}"


def test_every_other_requirements_file_agrees_with_the_lock():
    pins = _pins(LOCK)
    for file in ("cpu.txt", "corpus.txt"):
        for name, version in _pins(ROOT / "requirements" / file).items():
            assert pins.get(name) == version, f"requirements/{file}: {name}=={version} vs lock"
    # requirements/gpu-host.txt names packages; their versions come from the lock.
    names = [
        line.split("#")[0].strip()
        for line in (ROOT / "requirements" / "gpu-host.txt").read_text().splitlines()
    ]
    assert [n for n in names if n and _name(n) not in pins] == []
    assert not any("==" in n for n in names), "gpu-host.txt takes its versions from the lock"


def test_the_environment_is_the_lock():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_lock.py"), str(LOCK)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
