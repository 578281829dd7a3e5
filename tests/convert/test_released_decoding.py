"""Decoding = the released remote code's semantics (notes: DESIGN.md §5, docs/inference.md).

Greedy, batch 1: the Megatron samplers, the export's card API and an independent sampler written
here from the released semantics (on the model's prefill / advance / denoise_block only — none of
our sampler code) give identical tokens for AR, mock-AR and mask diffusion, with blocks smaller
than the Mamba chunk. The export's card API: released keywords and defaults, ``step_callback``,
the forward counts of the last call, ``eos_token_id=None`` never stops.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from tests.convert.models import parity_config
from tests.convert.two_tower_models import export, load_export, random_two_tower
from twotower_train import distributed
from twotower_train.decoding.samplers import (
    ARConfig,
    MaskDiffusionConfig,
    MockARConfig,
    generate_ar,
    generate_mask_diffusion,
    generate_mock_ar,
)

PROMPT = [5, 17, 99, 240, 31, 7]
NEW = 32
MASK = 3
CHUNK = 32  # the Mamba chunk: every S below is smaller
SHARPEN = 6.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    distributed.initialize(seed=0)
    model = random_two_tower(parity_config().replace(mamba_chunk_size=CHUNK), seed=4)
    with torch.no_grad():  # sharper denoiser logits: confidences above γ, not only the floor
        model.denoiser.backbone.output_layer.weight.mul_(SHARPEN)
    assert not model.denoiser_shift
    return model, load_export(export(model, tmp_path_factory.mktemp("export") / "hf"))


# --- the independent reference: the released generate_* semantics, greedy, batch 1 -------------


def reference_ar(model, prompt: list[int], new: int) -> list[int]:
    step = model.prefill(torch.tensor([prompt]), logits="last")
    out = []
    for _ in range(new):
        out.append(int(step.logits[0, -1].argmax()))
        step = model.advance(step.cache, torch.tensor([out[-1:]]), logits="last")
    return out


def reference_mock_ar(model, prompt: list[int], new: int) -> list[int]:
    """Token p: the unmodulated denoiser on token p − 1, the context cache before p − 1."""
    before = model.prefill(torch.tensor([prompt[:-1]]), logits="none").cache
    last = prompt[-1]
    after = model.advance(before, torch.tensor([[last]]), logits="none").cache
    out = []
    for _ in range(new):
        logits = model.denoise_block(before, torch.tensor([[last]]), None)
        last = int(logits[0, -1].argmax())
        out.append(last)
        before, after = after, model.advance(after, torch.tensor([[last]]), logits="none").cache
    return out


def reference_mask_diffusion(model, prompt, new, block_size, steps, gamma) -> list[int]:
    cache = model.prefill(torch.tensor([prompt]), logits="none").cache
    out = []
    for _ in range(new // block_size):
        xt = torch.full((block_size,), MASK)
        for step in range(steps):
            masked = xt == MASK
            n = int(masked.sum())
            if n == 0:
                break
            t = masked.float().mean().reshape(1)
            logits = model.denoise_block(cache, xt[None], t)[0].float()  # (S, V)
            logits[:, MASK] = -1e12
            probs = logits.log_softmax(-1).exp()  # untempered p(x0 | xt)
            predicted = probs.argmax(-1)
            confidence = probs.gather(-1, predicted[:, None])[:, 0]
            if step == steps - 1:
                commit = n
            else:
                above = int(((confidence > gamma) & masked).sum())
                commit = min(max(above if above > 0 else 1, math.ceil(n / (steps - step))), n)
            proposal = torch.where(masked, predicted, xt)
            candidates = masked.nonzero()[:, 0]
            lowest = candidates[confidence[candidates].argsort()][: n - commit]
            proposal[lowest] = MASK  # the least confident stay masked
            xt = proposal
        out += xt.tolist()
        cache = model.advance(cache, xt[None], logits="none").cache
    return out


# --- identity -----------------------------------------------------------------------------------


def test_ar_and_mock_ar_equal_the_released_semantics(pair):
    model, hf = pair
    ids = torch.tensor([PROMPT])
    ar = reference_ar(model, PROMPT, NEW)
    assert generate_ar(model, [PROMPT], ARConfig(max_new_tokens=NEW)).tokens == [ar]
    assert hf.generate_ar(ids, max_new_tokens=NEW)[0, len(PROMPT) :].tolist() == ar
    mock = reference_mock_ar(model, PROMPT, NEW)
    assert generate_mock_ar(model, [PROMPT], MockARConfig(max_new_tokens=NEW)).tokens == [mock]
    assert hf.generate_mock_ar(ids, max_new_tokens=NEW)[0, len(PROMPT) :].tolist() == mock
    assert mock != ar  # the denoiser's own predictions, not the context tower's
    assert hf._last_nfe == NEW and hf.last_generation.tokens_per_forward == 1.0


@pytest.mark.parametrize("gamma", [0.5, 0.8, 0.9])
@pytest.mark.parametrize("block_size", [4, 8, 16])
@pytest.mark.parametrize("halve", [False, True])
def test_mask_diffusion_equals_the_released_semantics(pair, gamma, block_size, halve):
    model, hf = pair
    steps = block_size // 2 if halve else block_size
    assert block_size < model.cfg.mamba_chunk_size == hf.config.chunk_size
    expected = reference_mask_diffusion(model, PROMPT, NEW, block_size, steps, gamma)
    options = dict(block_size=block_size, steps_per_block=steps, confidence_threshold=gamma)
    config = MaskDiffusionConfig(max_new_tokens=NEW, mask_token_id=MASK, **options)
    ours = generate_mask_diffusion(model, [PROMPT], config)
    assert ours.tokens == [expected]
    theirs = hf.generate_mask_diffusion(torch.tensor([PROMPT]), max_new_tokens=NEW, **options)
    assert theirs[0, len(PROMPT) :].tolist() == expected
    assert hf._last_nfe == ours.denoiser_forwards == hf.last_generation.denoiser_forwards


@pytest.mark.parametrize("gamma", [0.5, 0.9])
def test_gamma_commits_several_tokens_per_forward(pair, gamma):
    """The identity above exercises the threshold, not only the floor (S steps: 1 per step)."""
    model, _ = pair
    config = MaskDiffusionConfig(max_new_tokens=NEW, mask_token_id=MASK, confidence_threshold=gamma)
    assert generate_mask_diffusion(model, [PROMPT], config).tokens_per_forward > 1.0


# --- the card API -------------------------------------------------------------------------------


def test_card_signatures_take_the_released_keywords_and_defaults(pair):
    _, hf = pair
    released = {
        "generate_mask_diffusion": dict(
            max_new_tokens=128,
            block_size=16,
            steps_per_block=16,
            mask_token_id=3,
            temperature=0.0,
            top_k=None,
            confidence_threshold=0.9,
            eos_token_id=None,
            step_callback=None,
        ),
        "generate_mock_ar": dict(
            max_new_tokens=128, temperature=0.0, top_k=None, top_p=None, eos_token_id=None
        ),
        "generate_ar": dict(
            max_new_tokens=128, temperature=0.0, top_k=None, top_p=None, eos_token_id=None
        ),
    }
    for name, defaults in released.items():
        parameters = inspect.signature(getattr(hf, name)).parameters
        positional = [
            p for p in parameters if parameters[p].kind is not inspect.Parameter.KEYWORD_ONLY
        ]
        assert positional == ["input_ids", *defaults], name  # the released order
        assert {k: parameters[k].default for k in defaults} == defaults, name


def test_step_callback_sees_every_step(pair):
    _, hf = pair
    calls = []
    hf.generate_mask_diffusion(
        torch.tensor([PROMPT]),
        max_new_tokens=16,
        block_size=8,
        steps_per_block=8,
        step_callback=lambda step, steps, xt, t, logits, block_idx: calls.append(
            (step, steps, xt.clone(), t, logits, block_idx)
        ),
    )
    starts = [c for c in calls if c[4] is None]
    assert [(c[0], c[1], c[3], c[5]) for c in starts] == [(0, 8, 1.0, 0), (0, 8, 1.0, 1)]
    assert all(bool((c[2] == MASK).all()) for c in starts)
    steps = [c for c in calls if c[4] is not None]
    assert len(steps) == hf._last_nfe
    for step, total, xt, t, logits, _ in steps:
        assert total == 8 and 0 <= step < 8 and logits.shape == (1, 8, hf.config.vocab_size)
        assert t == pytest.approx(float((xt == MASK).float().mean()))


def test_eos_none_never_stops(pair):
    """``eos_token_id=None`` means no EOS stop, whatever the config's EOS id."""
    _, hf = pair
    ids = torch.tensor([PROMPT])
    for generate in (hf.generate_ar, hf.generate_mock_ar, hf.generate_mask_diffusion):
        free = generate(ids, max_new_tokens=16)[0, len(PROMPT) :].tolist()
        eos = free[2]
        saved, hf.config.eos_token_id = hf.config.eos_token_id, eos
        try:
            assert generate(ids, max_new_tokens=16)[0, len(PROMPT) :].tolist() == free
            stopped = generate(ids, max_new_tokens=16, eos_token_id=eos)[0, len(PROMPT) :]
            assert stopped.tolist() == free[: free.index(eos) + 1]
        finally:
            hf.config.eos_token_id = saved


def test_one_token_prompt_mock_ar(pair):
    """A one-token prompt: the denoiser's cache is empty (the released code's two-pass prefill
    over nothing); the export and Megatron agree, also batched with a longer prompt."""
    model, hf = pair
    prompts = [[77], PROMPT]
    ours = generate_mock_ar(model, prompts, MockARConfig(max_new_tokens=6)).tokens
    assert ours[1] == reference_mock_ar(model, PROMPT, 6)
    ids = torch.tensor([[0] * (len(PROMPT) - 1) + [77], PROMPT])
    mask = (torch.arange(len(PROMPT)) >= torch.tensor([[len(PROMPT) - 1], [0]])).long()
    theirs = hf.generate_mock_ar(ids, max_new_tokens=6, attention_mask=mask)
    assert theirs[:, len(PROMPT) :].tolist() == ours


def test_the_model_cards_code_runs_as_written(pair, tokenizer_dir, tmp_path):
    """seeds/model_card.txt's "Use it with Transformers" calls, devices set to the CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_name = str(export(pair[0], tmp_path / "hf", AutoTokenizer.from_pretrained(tokenizer_dir)))
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    model = AutoModelForCausalLM.from_pretrained(
        model_name,
        torch_dtype=torch.bfloat16,
        trust_remote_code=True,
    )
    model.place_towers_on_devices("cpu", "cpu")
    model.eval()
    prompt = "France is a country "
    inputs = tokenizer(prompt, return_tensors="pt").to("cpu")
    outputs = model.generate_mask_diffusion(
        inputs["input_ids"],
        max_new_tokens=128,
        block_size=16,  # tokens generated per block
        steps_per_block=16,  # denoising iterations per block
        mask_token_id=3,  # [MASK]
        temperature=0.1,
        confidence_threshold=0.8,  # commit positions above this confidence each step
        eos_token_id=tokenizer.eos_token_id,
    )
    texts = [tokenizer.decode(outputs[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)]
    assert 0 < model._last_nfe <= 128
    outputs = model.generate_mock_ar(
        inputs["input_ids"],
        max_new_tokens=128,
        temperature=0.0,
        eos_token_id=tokenizer.eos_token_id,
    )
    texts.append(tokenizer.decode(outputs[0], skip_special_tokens=True))
    outputs = model.generate_ar(
        inputs["input_ids"],
        max_new_tokens=128,
        temperature=0.0,
        eos_token_id=tokenizer.eos_token_id,
    )
    texts.append(tokenizer.decode(outputs[0], skip_special_tokens=True))
    assert all(isinstance(text, str) for text in texts)
