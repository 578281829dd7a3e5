"""Training-test fixtures (shared with tests/distributed/): tiny demo-shaped data, a recipe
builder, a stage-1 backbone checkpoint, and the helpers that run a trainer.

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
    from twotower_train.training.recipes import load_config

    def build(*overrides: str, name: str = "demo", check_data: bool = True):
        base = [
            f"data.root={data_root}",
            f"output_dir={tmp_path / 'run'}",
            *TINY_OVERRIDES,
        ]
        return load_config(name, [*base, *overrides], check_data=check_data)

    return build


def three_phases(
    steps: int = 4, *, wiki_then_chat: bool = False, data_root: Path | None = None
) -> list[str]:
    """Overrides for the 3-phase demo_twotower curriculum (S=32 → 32 → 16) with ``steps`` per
    phase, no warm-up, a one-step decay and peaks 1e-3 / 2e-3 / 3e-3."""
    out = ["curriculum=demo_twotower"]
    for i in range(3):
        out += [
            f"curriculum.phases.{i}.steps={steps}",
            f"curriculum.phases.{i}.lr.warmup_steps=0",
            f"+curriculum.phases.{i}.lr.decay_steps=1",
            f"curriculum.phases.{i}.lr.peak={1e-3 * (i + 1)}",
            f"curriculum.phases.{i}.lr.min=1e-5",
            f"~curriculum.phases.{i}.lr.decay_fraction",
        ]
    if wiki_then_chat:
        out += [
            f"data.blends.broad=[{{prefix:{data_root}/indexed/wiki,weight:1.0}}]",
            f"data.blends.quality=[{{prefix:{data_root}/indexed/chitchat,weight:1.0}}]",
        ]
    return out


def train(cfg):
    """Build a Trainer for ``cfg``, train, close; returns ``(trainer, outcome)``."""
    from twotower_train.training.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        outcome = trainer.train().outcome
    finally:
        trainer.close()
    return trainer, outcome


def train_backbone(data_root: Path, run_dir: Path, *overrides: str) -> Path:
    """A stage-1 (AR, TP=1) checkpoint root after one step on the tiny model: the backbone a
    stage-2 test starts from (``objective.backbone_checkpoint``)."""
    from twotower_train.training.recipes import load_config

    cfg = load_config(
        "demo",
        [
            f"data.root={data_root}",
            f"output_dir={run_dir}",
            f"checkpoint.dir={run_dir}/ck",
            *TINY_OVERRIDES,
            "curriculum.phases.0.steps=4",
            "curriculum.phases.0.lr.warmup_steps=1",
            "training.max_steps=1",
            *overrides,
        ],
    )
    train(cfg)
    return run_dir / "ck"


@pytest.fixture(scope="session")
def backbone_checkpoint(data_root, tmp_path_factory) -> Path:
    """Stage-1 checkpoint root of the tiny model (built once per session)."""
    return train_backbone(data_root, tmp_path_factory.mktemp("stage1"))


@pytest.fixture(scope="session")
def two_tower_checkpoint(data_root, tmp_path_factory) -> Path:
    """A stage-2 (two-tower) checkpoint of the tiny model on the test data: 2 AR steps, then two
    steps per curriculum phase (built once per session; for loading, decoding and eval tests)."""
    from twotower_train import distributed
    from twotower_train.training.cli import run
    from twotower_train.training.recipes import load_config

    distributed.initialize(seed=0)
    root = tmp_path_factory.mktemp("two_tower_run")
    base = [f"data.root={data_root}", *TINY_OVERRIDES]
    stage1 = load_config(
        "demo",
        [
            *base,
            f"output_dir={root / 'stage1'}",
            "curriculum.phases.0.steps=2",
            "curriculum.phases.0.lr.warmup_steps=0",
        ],
    )
    assert run(stage1).outcome == "finished"
    stage2 = load_config(
        "demo_twotower",
        [
            *base,
            f"output_dir={root / 'stage2'}",
            f"objective.backbone_checkpoint={stage1.checkpoint.dir}",
            *[f"curriculum.phases.{i}.steps=2" for i in range(3)],
            *[f"curriculum.phases.{i}.lr.warmup_steps=0" for i in range(3)],
        ],
    )
    assert run(stage2).outcome == "finished"
    return Path(stage2.checkpoint.dir)
