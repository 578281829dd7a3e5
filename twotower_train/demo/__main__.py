"""``python -m twotower_train.demo`` = ``twotower-demo``."""

from twotower_train.demo.cli import main

if __name__ == "__main__":  # dist_checkpointing may spawn processes: keep the guard
    main()
