"""Decoding a two-tower model on token ids: the context cache, token choice, the samplers
(mask diffusion, mock-AR, AR) and lossless self-speculative decoding.

These files import only ``torch`` and each other (``tests/inference/test_samplers.py`` checks
it): the Hugging Face export ships verbatim copies of exactly the modules in
:data:`PORTABLE_MODULES`, so Megatron and the export decode with one algorithm. The model
(:mod:`twotower_train.model`) implements their ``DecodingModel`` interface.
"""

PORTABLE_MODULES: tuple[str, ...] = (
    "cache",
    "interface",
    "sampling",
    "batching",
    "compiled",
    "unmasking",
    "samplers",
    "speculative",
    "card",
)
