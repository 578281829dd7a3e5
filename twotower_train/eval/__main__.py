"""``python -m twotower_train.eval`` = ``twotower-lm-eval``."""

from twotower_train.eval.cli import main

if __name__ == "__main__":
    main()
