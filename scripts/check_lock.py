"""Exit 1, naming each package, if the running environment differs from a lock file's pins.

    .venv/bin/python scripts/check_lock.py requirements/lock.txt

scripts/bootstrap.sh runs it last, so an install that did not end on the locked versions (a
package pip could not downgrade, a hand-installed upgrade) fails loudly instead of drifting.
"""

import importlib.metadata
import re
import sys


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(lock_path: str) -> int:
    installed = {
        _normalise(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
    }
    wrong = []
    for line in open(lock_path, encoding="utf-8"):
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep and installed.get(_normalise(name)) != version:
            wrong.append(
                f"{name}=={version} (installed: {installed.get(_normalise(name), 'none')})"
            )
    if wrong:
        print(
            f"check_lock: the venv differs from {lock_path}: " + ", ".join(wrong), file=sys.stderr
        )
        print("check_lock: fix: rm -rf .venv && bash scripts/bootstrap.sh", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
