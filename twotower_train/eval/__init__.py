"""Evaluation of a two-tower model: quality through lm-evaluation-harness and the scorers behind
it (docs/evaluation.md).

* :mod:`.scoring` — continuation log-likelihoods through the context tower (``ar``, exact) or the
  denoiser (``mock_ar``), on any DecodingModel (torch only);
* :mod:`.harness` — the lm-eval model ``twotower`` (needs the ``eval`` extra: ``lm_eval``);
* :mod:`.masked_accuracy` — the denoiser's masked-token accuracy against the unigram baseline;
* :mod:`.mode_comparison` — every generation mode on one prompt set, timed and compared with AR
  (shared by ``benchmarks/generation.py`` and the reproduction pipeline,
  :mod:`twotower_train.reproduce`);
* :mod:`.cli` — ``twotower-lm-eval`` / ``python -m twotower_train.eval``: lm-eval's command line
  with that model registered.

Throughput and agreement with AR are measured by ``benchmarks/generation.py``.
"""
