"""Generation front ends for a trained two-tower model: checkpoint loading (``load``), the named
decoding modes (``modes``) and the ``twotower-generate`` command (``cli``). The samplers
themselves are the torch-only :mod:`twotower_train.decoding` package.
"""
