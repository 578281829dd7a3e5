"""``load_trained_model(path, device=, dtype=)`` and ``TwoTowerModel.place_towers`` on the CPU
(tests/gpu/ repeats them on a GPU)."""

from __future__ import annotations

import pytest
import torch

from tests.training.fixtures import TINY_OVERRIDES, data_root  # noqa: F401  (fixture)
from tests.training.fixtures import train
from twotower_train.inference.load import load_trained_model
from twotower_train.inference.samplers import (
    ARConfig,
    MaskDiffusionConfig,
    MockARConfig,
    generate_ar,
    generate_mask_diffusion,
    generate_mock_ar,
)

PROMPTS = [[5, 17, 99, 240, 31, 7], [12, 40, 9]]


@pytest.fixture(scope="module")
def stage2_checkpoint(data_root, tmp_path_factory):
    """A two-tower checkpoint after two training steps (fp32), shared by this module's tests."""
    from twotower_train.training.config import load_config

    run = tmp_path_factory.mktemp("stage2")
    cfg = load_config("demo", [
        f"data.root={data_root}", f"output_dir={run}", *TINY_OVERRIDES, "objective=diffusion",
        "objective.backbone_checkpoint=none",  # random towers: the test is about placement
        "curriculum.phases.0.steps=2", "curriculum.phases.0.lr.warmup_steps=0",
        f"checkpoint.dir={run / 'ck'}",
    ])
    train(cfg)
    return run / "ck"


def test_load_on_a_device_moves_the_whole_model(stage2_checkpoint, single_process):
    # The meta device stands for "not where it was built": nothing may stay behind (Megatron
    # builds some parameters, e.g. router weights, on the default device).
    model, _ = load_trained_model(stage2_checkpoint, device="meta")
    placed = {t.device for t in [*model.parameters(), *model.buffers()]}
    assert placed == {torch.device("meta")}


def test_load_in_bf16_keeps_the_weights(stage2_checkpoint, single_process):
    fp32, cfg = load_trained_model(stage2_checkpoint)
    bf16, _ = load_trained_model(stage2_checkpoint, dtype=torch.bfloat16)
    assert cfg.optimizer.precision.value == "fp32"
    assert next(fp32.parameters()).dtype == torch.float32
    weights = dict(fp32.named_parameters())
    for name, p in bf16.named_parameters():
        if name.endswith(("A_log", ".D")):  # Megatron keeps these fp32 in any precision
            assert p.dtype == torch.float32
            assert torch.equal(p, weights[name]), name
        else:
            assert p.dtype == torch.bfloat16, name
            assert torch.equal(p, weights[name].to(torch.bfloat16)), name
    tokens = torch.tensor([PROMPTS[0]])
    ref = fp32.prefill(tokens, logits="all").logits.float()
    low = bf16.prefill(tokens, logits="all").logits.float()
    # bf16 weights and activations (8-bit mantissa) through 4 layers: a few percent of the
    # logit scale.
    assert (low - ref).abs().max() <= 0.05 * ref.abs().max()


def test_towers_placed_apart_decode_the_same(stage2_checkpoint, single_process):
    model, cfg = load_trained_model(stage2_checkpoint)
    mask = cfg.model.mask_token_id
    runs = {
        "diffusion": lambda: generate_mask_diffusion(model, PROMPTS, MaskDiffusionConfig(
            max_new_tokens=16, block_size=8, steps_per_block=4, mask_token_id=mask)),
        "mock_ar": lambda: generate_mock_ar(
            model, PROMPTS, MockARConfig(max_new_tokens=6, mask_token_id=mask)),
        "ar": lambda: generate_ar(model, PROMPTS, ARConfig(max_new_tokens=6)),
    }
    together = {name: run().tokens for name, run in runs.items()}
    assert model.place_towers("cpu", torch.device("cpu")) is model
    assert model.context_device == model.denoiser_device == torch.device("cpu")
    assert {name: run().tokens for name, run in runs.items()} == together
    assert model.place_towers_on_devices == model.place_towers  # the model card's name
