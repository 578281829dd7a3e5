"""``python -m twotower_train.reproduce`` = ``twotower-reproduce``."""

from twotower_train.reproduce.cli import main

if __name__ == "__main__":  # dist_checkpointing may spawn processes: keep the guard
    main()
