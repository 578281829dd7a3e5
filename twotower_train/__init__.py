"""twotower-train: a Megatron-Core extension for two-tower block-diffusion language models.

Importing the package applies :mod:`twotower_train.cpu_compat` (a no-op when CUDA is present),
so Megatron-Core runs on CPU-only machines for development, tests and CI, and gives Megatron's
Mamba mixer the pure-PyTorch ops where mamba_ssm's kernels are missing
(:func:`twotower_train.backends.install_mamba_fallback`).
"""

from twotower_train import backends, cpu_compat

cpu_compat.apply()
backends.install_mamba_fallback()

__version__ = "0.1.0"
