"""``python -m twotower_train.training`` = ``twotower-train``."""

from twotower_train.training.cli import main

if __name__ == "__main__":  # dist_checkpointing may spawn processes: keep the guard
    main()
