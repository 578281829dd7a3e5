"""Data preparation for twotower-train: local corpora -> tokenizer -> Megatron indexed datasets.

Entry points: ``python -m data_tools.prepare`` (tokenize local files into ``.bin``/``.idx``),
``python -m data_tools.train_tokenizer`` (byte-level BPE) and ``python -m data_tools.demo_corpus``
(the offline demo corpus). The loading side is ``twotower_train.data``; see ``docs/data.md``.
"""
