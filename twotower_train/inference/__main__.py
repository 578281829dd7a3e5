"""``python -m twotower_train.inference`` = ``twotower-generate``."""

from twotower_train.inference.cli import main

if __name__ == "__main__":
    main()
