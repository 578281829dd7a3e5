"""``load_trained_model(path, device=, dtype=)`` and ``TwoTowerModel.place_towers`` on the CPU,
one tower on the meta device to tell the two apart (tests/gpu/ repeats them on a GPU)."""

from __future__ import annotations

import pytest
import torch

from tests.inference.placement import cache_devices, tensor_devices
from twotower_train.decoding.samplers import left_pad
from twotower_train.inference.load import load_trained_model

PROMPTS = [[5, 17, 99, 240, 31, 7], [12, 40, 9]]


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


TOWERS = {"context_tower.": "context", "denoiser.": "denoiser"}


@pytest.mark.parametrize("context, denoiser", [("meta", "cpu"), ("cpu", "meta")])
def test_place_towers_puts_each_tower_on_its_device(
    stage2_checkpoint, single_process, context, denoiser
):
    model, _ = load_trained_model(stage2_checkpoint)
    assert model.place_towers(context, torch.device(denoiser)) is model
    assert tensor_devices(model, TOWERS) == {
        "context": {torch.device(context)},
        "denoiser": {torch.device(denoiser)},
    }
    assert (model.context_device, model.denoiser_device) == (
        torch.device(context),
        torch.device(denoiser),
    )
    assert model.place_towers_on_devices == model.place_towers  # the model card's name


def test_caches_live_with_the_tower_that_reads_them(single_process, tiny_cfg):
    """The context tower's caches are on its device; moved to the denoiser's, the denoiser runs
    there without touching the other device (meta and CPU tensors cannot mix). Not the other
    way round: the context tower reads its padding mask on the host. No MoE layer: Megatron's
    token dispatcher copies expert counts to the host, which meta tensors cannot."""
    from twotower_train.model.two_tower import TwoTowerModel

    cfg = tiny_cfg.replace(pattern="M*-")
    model = TwoTowerModel.build(cfg).eval()
    cpu, meta = torch.device("cpu"), torch.device("meta")
    model.place_towers(cpu, meta)
    tokens, valid = left_pad(PROMPTS, 0, model.context_device)
    out = model.prefill(tokens, valid=valid)
    assert cache_devices(out.cache) == {cpu} and out.logits.device == cpu
    moved = out.cache.to(model.denoiser_device)
    assert cache_devices(moved) == {meta}
    block = torch.full((2, 8), cfg.mask_token_id, device=meta)
    logits = model.denoise_block(moved, block, torch.ones(2, device=meta))
    assert logits.device == meta and logits.shape == (2, 8, cfg.vocab_size)
    step = model.advance(out.cache, torch.tensor([[4] * 8, [5] * 8]), logits="all")
    assert cache_devices(step.cache) == {cpu} and step.logits.device == cpu


def test_context_only_placement_decodes_ar_and_refuses_the_denoiser(single_process, tiny_cfg):
    """``place(..., context_only=True)`` (what ``load_for_decoding(context_only=True)`` and
    ``twotower-generate --context-only`` do): the denoiser's weights leave for the meta device,
    AR decodes exactly as before, a mode that needs the denoiser is refused by name, and each
    mode's generator belongs on the device it samples on."""
    from twotower_train.errors import UserError
    from twotower_train.inference import modes
    from twotower_train.inference.load import load_for_decoding, place
    from twotower_train.model.two_tower import TwoTowerModel

    cfg = tiny_cfg.replace(pattern="M*-")
    model = TwoTowerModel.build(cfg).eval()
    assert place(model) is model and model.denoiser_device == torch.device("cpu")
    assert modes.sampling_device(model, "mask_diffusion") == torch.device("cpu")
    config = modes.build_config("ar", max_new_tokens=6)
    reference = modes.generate(model, PROMPTS, "ar", config).tokens
    place(model, "cpu", context_only=True)
    assert tensor_devices(model, TOWERS) == {
        "context": {torch.device("cpu")},
        "denoiser": {torch.device("meta")},
    }
    assert modes.generate(model, PROMPTS, "ar", config).tokens == reference
    diffusion = modes.build_config("mask_diffusion", max_new_tokens=6)
    with pytest.raises(modes.SamplerError, match="loaded context-only"):
        modes.generate(model, PROMPTS, "mask_diffusion", diffusion)
    assert modes.sampling_device(model, "ar") == torch.device("cpu")
    assert modes.sampling_device(model, "mask_diffusion") == torch.device("meta")
    apart = place(TwoTowerModel.build(cfg).eval(), "meta", "cpu")  # place_towers_on_devices
    assert (apart.context_device, apart.denoiser_device) == (
        torch.device("meta"),
        torch.device("cpu"),
    )
    with pytest.raises(UserError, match="context_only keeps no denoiser"):
        load_for_decoding("nowhere", context_only=True, denoiser_device="cpu")


def test_a_model_bound_elsewhere_is_built_on_the_cpu_even_with_cuda(
    monkeypatch, tiny_cfg, single_process
):
    """On a CUDA host Megatron allocates a model on the GPU unless ``use_cpu_initialization``;
    ``cpu_initialization`` (what ``load_trained_model`` builds a CPU-bound or context-only model
    under, e.g. for ``export-hf``) makes every ``transformer_config`` caller choose the CPU
    there, and nothing else: CUDA still looks available to what runs inside."""
    from twotower_train import backends
    from twotower_train.inference import load
    from twotower_train.model import backbone, two_tower

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a CUDA host, as far as
    monkeypatch.setattr(backends, "cuda_available", lambda: True)  # the build can tell
    assert backbone.transformer_config(tiny_cfg).use_cpu_initialization is False
    with load.cpu_initialization():
        assert torch.cuda.is_available()
        assert backbone.transformer_config(tiny_cfg).use_cpu_initialization is True
        model = two_tower.TwoTowerModel.build(tiny_cfg.replace(pattern="M*-"))
    assert model.context_tower.backbone.config.use_cpu_initialization is True
    assert model.denoiser.backbone.config.use_cpu_initialization is True
    with load.cpu_initialization(active=False):
        assert backbone.transformer_config(tiny_cfg).use_cpu_initialization is False
    assert two_tower.transformer_config(tiny_cfg).use_cpu_initialization is False  # restored
