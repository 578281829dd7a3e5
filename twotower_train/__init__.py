"""twotower-train: a Megatron-Core extension for two-tower block-diffusion language models.

Importing the package installs :mod:`twotower_train.megatron_hook`: when Megatron-Core is
imported it applies :mod:`twotower_train.cpu_compat` (a no-op when CUDA is present), so
Megatron-Core runs on CPU-only machines for development, tests and CI, and Megatron's Mamba
mixer gets the pure-PyTorch ops where mamba_ssm's kernels are missing
(:func:`twotower_train.backends.install_mamba_fallback`). The import itself loads neither torch
nor Megatron.

It also hides the import-time notices about optional GPU packages a CPU cannot use
(:func:`twotower_train.cli.quiet_startup`: those exact messages only), so a snippet that imports
``twotower_train`` starts as quietly as the commands do; ``TWOTOWER_DEBUG=1`` shows them.
"""

from twotower_train import cli, megatron_hook

megatron_hook.install()
cli.quiet_startup()

__version__ = "0.1.0"
