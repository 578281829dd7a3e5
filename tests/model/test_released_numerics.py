"""The released model's numerics as config choices: the MoE router's dtype
(``model.moe_router_dtype``, Megatron's ``moe_router_dtype``) and the denoiser's seeded scan
dtype (``model.denoiser_scan_dtype``); the Nano recipe sets fp64 and fp32."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.kernels import seeded_scan_nano as nano
from twotower_train.errors import ConfigError
from twotower_train.model import mixers
from twotower_train.model.backbone import transformer_config
from twotower_train.model.config import preset
from twotower_train.model.two_tower import TwoTowerModel
from twotower_train.training.config import _model
from twotower_train.training.recipes import compose


def test_nano_recipe_has_the_released_numerics():
    recipe = compose("nano_30b_a3b")
    cfg = _model(OmegaConf.to_container(recipe.model, resolve=True))
    assert (cfg.moe_router_dtype, cfg.denoiser_scan_dtype) == ("fp64", "fp32")
    assert transformer_config(cfg).moe_router_dtype == "fp64"
    # Elsewhere the defaults keep today's numerics.
    tiny = preset("tiny")
    assert (tiny.moe_router_dtype, tiny.denoiser_scan_dtype) == ("fp32", "activation")
    assert transformer_config(tiny).moe_router_dtype == "fp32"


@pytest.mark.parametrize(
    "field, value", [("moe_router_dtype", "bf16"), ("denoiser_scan_dtype", "fp16")]
)
def test_bad_dtype_is_one_config_error(field, value):
    with pytest.raises(ConfigError, match=rf"model\.{field}='{value}' is not one of"):
        _model({"preset": "tiny", field: value})


def test_fp64_router_routes_in_fp64(single_process):
    """Megatron's router computes its logits in the configured dtype: fp64 logits equal an fp64
    reference matmul of the same inputs, and differ from the fp32 router's; backward runs."""
    cfg = preset("tiny", moe_router_dtype="fp64")
    model = TwoTowerModel.build(cfg)
    router = next(m for n, m in model.denoiser.named_modules() if n.endswith("mlp.router"))
    seen = []
    router.register_forward_hook(lambda _m, _i, out: seen.append(out))
    logits = []
    original = router.gating
    router.gating = lambda x: logits.append((x, original(x))) or logits[-1][1]
    tokens = torch.randint(4, cfg.vocab_size, (1, 16))
    model(tokens, tokens, torch.full((1, 2), 0.5), 8).float().square().mean().backward()
    assert router.weight.grad is not None and router.weight.grad.isfinite().all()
    (x, got), probs = logits[0], seen[0][0]
    assert got.dtype == torch.float64 and probs.dtype == torch.float64
    ref = x.double() @ router.weight.double().t()
    torch.testing.assert_close(got.detach(), ref.detach().reshape(got.shape), rtol=0, atol=1e-12)
    assert (x.float() @ router.weight.float().t() - ref).abs().max() > 0  # fp32 would differ


def test_denoiser_scan_runs_in_the_configured_dtype(single_process, monkeypatch):
    """bf16 activations: with ``fp32`` the denoiser's scans get fp32 x/B/C/z and seeds (held in
    bf16) and its output keeps bf16, in training (forward and backward) and in sampling; with
    ``activation`` they get bf16. The context tower's scans stay bf16 either way."""
    seen = []
    real = mixers.backends.mamba_scan

    def spy(device, *, needs_grad, state_stride):
        impl = real(device, needs_grad=needs_grad, state_stride=state_stride)

        def scan(x, dt, A, B, C, *args, **kw):
            seed = kw["initial_state"]
            activations = {x.dtype, B.dtype, C.dtype, kw["z"].dtype}
            seen.append((state_stride is None, activations, seed is None or seed.dtype))
            return impl(x, dt, A, B, C, *args, **kw)

        return scan

    monkeypatch.setattr(mixers.backends, "mamba_scan", spy)
    tokens = torch.randint(4, 4096, (1, 16))
    for choice, dtype in (("fp32", torch.float32), ("activation", torch.bfloat16)):
        seen.clear()
        model = TwoTowerModel.build(
            preset("tiny", denoiser_scan_dtype=choice), params_dtype=torch.bfloat16
        )
        logits = model(tokens, tokens, torch.full((1, 2), 0.5), 8)
        assert logits.dtype == torch.bfloat16
        logits.float().square().mean().backward()
        grads = [p.grad for n, p in model.denoiser.named_parameters() if "mixer.in_proj" in n]
        assert grads and all(g is not None and g.isfinite().all() for g in grads)
        training = list(seen)
        # Sampling: the denoiser's block scans (seeded from the cache) follow the choice too.
        seen.clear()
        model.eval()
        with torch.no_grad():
            cache = model.prefill(tokens).cache
            model.denoise_block(cache, torch.full((1, 8), 3), torch.full((1,), 1.0))
        sampling = seen[-1:]  # the last scan is the denoiser's (prefill's are the context's)
        for calls in (training, sampling):
            denoiser = [(a, seed) for is_denoiser, a, seed in calls if is_denoiser]
            assert denoiser and all(a == {dtype} for a, _ in denoiser), (choice, calls)
            if choice == "fp32":  # seeds too (activation: as handed in, bf16 or fp32)
                assert all(seed is torch.float32 for _, seed in denoiser), (choice, calls)
        context = [a for is_denoiser, a, _ in training if not is_denoiser]
        assert context and all(a == {torch.bfloat16} for a in context), (choice, training)


def test_fp32_seeded_scan_of_bf16_inputs_is_closer_to_fp64():
    """The effect, at the Nano's Mamba sizes (S = 16 < chunk 128): the fp32 scan of bf16
    activations matches the fp64 per-token recurrence to fp32 rounding, the bf16 scan only to
    bf16's (its y is rounded to bf16, 2^-8 relative)."""
    t = nano.nano_inputs(16, seed=3, device="cpu")
    y_ref, _ = nano.recurrence(t)
    errors = {}
    for name, dtype in (("fp32", torch.float32), ("activation", None)):
        out = mixers.ssd_in_dtype(
            t["x"], t["dt"], t["A"], t["B"], t["C"], nano.CHUNK, D=t["D"], z=t["z"],
            initial_state=t["init"], needs_grad=False, scan_dtype=dtype,
        )  # fmt: skip
        assert out.y.dtype == (dtype or torch.bfloat16)
        errors[name] = (out.y.double() - y_ref).abs().max().item() / y_ref.abs().max().item()
    assert errors["fp32"] < 1e-5, errors
    assert 2**-10 < errors["activation"] <= 2**-8, errors
    assert errors["activation"] > 100 * errors["fp32"], errors
