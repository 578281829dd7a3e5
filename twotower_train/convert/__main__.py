"""``python -m twotower_train.convert`` = ``twotower-convert``."""

from twotower_train.convert.cli import main

if __name__ == "__main__":
    main()
