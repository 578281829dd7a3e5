"""Exit 1, naming each package, if the running environment differs from a lock file's pins.

    .venv/bin/python scripts/check_lock.py requirements/lock.txt

scripts/bootstrap.sh runs it last, so an install that did not end on the locked versions (a
package pip could not downgrade, a hand-installed upgrade) fails loudly instead of drifting.
"""

import importlib.metadata
import re
import sys


def normalise(name: str) -> str:
    """A package name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path) -> dict[str, str]:
    """``name==version`` lines of a requirements file (comments and other lines skipped)."""
    pins = {}
    for line in open(path, encoding="utf-8"):
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[normalise(name)] = version
    return pins


def main(lock_path: str) -> int:
    installed = {
        normalise(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
    }
    wrong = [
        f"{name}=={version} (installed: {installed.get(name, 'none')})"
        for name, version in read_pins(lock_path).items()
        if installed.get(name) != version
    ]
    if wrong:
        print(
            f"check_lock: the venv differs from {lock_path}: " + ", ".join(wrong), file=sys.stderr
        )
        print("check_lock: fix: rm -rf .venv && bash scripts/bootstrap.sh", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
