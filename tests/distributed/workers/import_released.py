"""2-rank worker: ``import-twotower`` of a released-layout folder at TP=2 (+SP) and at EP=2.

Args: FOLDER OUT_DIR — writes OUT_DIR/tp2 and OUT_DIR/ep2 (run folders).
"""

import sys
from pathlib import Path

import twotower_train  # noqa: F401
from twotower_train.convert.commands import import_twotower


def main(folder: str, out: str) -> None:
    import_twotower(folder, Path(out) / "tp2", tp=2)
    import_twotower(folder, Path(out) / "ep2", ep=2)


if __name__ == "__main__":
    main(*sys.argv[1:])
