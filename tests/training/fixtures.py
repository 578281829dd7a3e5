"""Training-test fixtures (shared with tests/distributed/test_train_*.py): tiny demo-shaped
data and a recipe builder.

The data folder has the demo layout (``tokenizer/``, ``indexed/wiki``, ``indexed/chitchat``), so
``recipes/demo.yaml`` runs on it with ``data.root=<folder>``. The two datasets use disjoint word
lists, which lets a test tell from the tokens which blend a batch came from.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

WIKI_WORDS = "river valley mountain castle kingdom ancient library forest harbour city".split()
CHAT_WORDS = "hello thanks okay sure yeah maybe awesome cool lol bye".split()


def _texts(words: list[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(8, 40))) for _ in range(count)]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """``<root>/tokenizer`` + ``<root>/indexed/{wiki,chitchat}`` (built once per session)."""
    from data_tools.prepare import prepare_dataset
    from data_tools.train_tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("train_data")
    wiki, chat = _texts(WIKI_WORDS, 300, 1), _texts(CHAT_WORDS, 300, 2)
    tokenizer = train_tokenizer(wiki[:100] + chat[:100], 320, root / "tokenizer")
    (root / "raw").mkdir()
    for name, texts in (("wiki", wiki), ("chitchat", chat)):
        src = root / "raw" / f"{name}.jsonl"
        src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        prepare_dataset([src], root / "indexed" / name, tokenizer, progress=False)
    return root


TINY_OVERRIDES = [
    "model=tiny",
    "data.seq_length=64",
    "model.vocab_size=512",
    "training.global_batch_size=4",
    "training.micro_batch_size=2",
    "training.log_interval=1",
    "training.eval_interval=0",
    "logging.wandb_mode=disabled",
]


@pytest.fixture
def recipe(data_root, tmp_path):
    """``recipe(*overrides, name="demo", check_data=True)`` -> TrainConfig on the test data,
    tiny shapes, run folder (and checkpoints) under this test's tmp_path."""
    from twotower_train.training.config import load_config

    def build(*overrides: str, name: str = "demo", check_data: bool = True):
        base = [
            f"data.root={data_root}",
            f"output_dir={tmp_path / 'run'}",
            *TINY_OVERRIDES,
        ]
        return load_config(name, [*base, *overrides], check_data=check_data)

    return build


@pytest.fixture(scope="session")
def two_tower_checkpoint(data_root, tmp_path_factory) -> Path:
    """A stage-2 (two-tower) checkpoint of the tiny model on the test data: 2 AR steps, then two
    steps per curriculum phase (built once per session; for loading, decoding and eval tests)."""
    from twotower_train import distributed
    from twotower_train.training.config import load_config
    from twotower_train.training.main import run

    distributed.initialize(seed=0)
    root = tmp_path_factory.mktemp("two_tower_run")
    base = [f"data.root={data_root}", *TINY_OVERRIDES]
    stage1 = load_config("demo", [
        *base, f"output_dir={root / 'stage1'}", "curriculum.phases.0.steps=2",
        "curriculum.phases.0.lr.warmup_steps=0",
    ])
    assert run(stage1) == "finished"
    stage2 = load_config("demo_twotower", [
        *base, f"output_dir={root / 'stage2'}",
        f"objective.backbone_checkpoint={stage1.checkpoint.dir}",
        *[f"curriculum.phases.{i}.steps=2" for i in range(3)],
        *[f"curriculum.phases.{i}.lr.warmup_steps=0" for i in range(3)],
    ])
    assert run(stage2) == "finished"
    return Path(stage2.checkpoint.dir)
