"""Generation with a trained two-tower model: samplers, their decoding state, checkpoint loading.

:data:`PORTABLE_MODULES` are the files that import only ``torch`` and each other; the Hugging
Face export ships verbatim copies of them, so Megatron and the export decode with one algorithm.
"""

PORTABLE_MODULES: tuple[str, ...] = ("cache", "sampling", "samplers", "speculative")
