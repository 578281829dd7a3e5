"""The one-command demo (``twotower-demo``, README): :mod:`.cli` holds its settings, the
pipeline arguments they become and the ``--check`` thresholds."""
