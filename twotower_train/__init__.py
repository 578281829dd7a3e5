"""twotower-train: a Megatron-Core extension for two-tower block-diffusion language models.

Importing the package applies :mod:`twotower_train.cpu_compat` (a no-op when CUDA is present),
so Megatron-Core runs on CPU-only machines for development, tests and CI.
"""

from twotower_train import cpu_compat

cpu_compat.apply()

__version__ = "0.1.0"
