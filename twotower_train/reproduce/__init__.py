"""The reproduction pipeline (``twotower-reproduce``, docs/results.md): data → stage 1 → stage 2
→ HF export → evaluation by one command.

* :mod:`.config` — :class:`~.config.ReproduceConfig`, the run's settings from the command line;
* :mod:`.pipeline` — the stages, their resume record (``OUT/stages.json``) and the results files;
* :mod:`.evaluate` — the evaluation stage: every generation mode on held-out task problems;
* :mod:`.results` — the results table, page and γ trade-off plot;
* :mod:`.cli` — ``twotower-reproduce`` / ``python -m twotower_train.reproduce``.
"""
