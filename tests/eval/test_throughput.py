"""The wall-clock timing shared by the generation benchmark and the reproduction
(``twotower_train.eval.throughput``): every model warms up once per mode, the timed passes run
modes interleaved batch by batch within each repeat, a pass's seconds sum its batches, tokens/s
is generated tokens over the median pass, and the speed-up divides by AR's at the same batch
size and variant."""

from __future__ import annotations

import dataclasses

import pytest

from twotower_train.eval import throughput


@dataclasses.dataclass(frozen=True)
class _Config:
    max_new_tokens: int


# Seconds of each run_mode call, per (mode, batch), in the order the repeats make them: two
# prompts are two batches of 1 (their seconds add up to the pass's) and one batch of 8.
SECONDS = {
    ("ar", 1): [3.0, 1.0, 0.5, 0.5, 1.0, 1.0],
    ("mask_diffusion", 1): [0.5, 0.5, 4.0, 5.0, 0.25, 0.25],
    ("ar", 8): [1.0, 1.0, 1.0],
    ("mask_diffusion", 8): [2.0, 2.0, 3.0],
}


@pytest.fixture
def fake_decoding(monkeypatch):
    calls, warm = [], []
    passes = {key: iter(values) for key, values in SECONDS.items()}

    def run_mode(model, prompts, mode, config, batch):
        calls.append((model, mode, batch, prompts))
        generated = len(prompts) * config.max_new_tokens
        tokens = [[len(calls)]] * len(prompts)
        return tokens, {"generated": generated}, next(passes[mode, batch])

    def generate(model, prompts, mode, config):
        warm.append((model, mode, config.max_new_tokens, len(calls)))

    monkeypatch.setattr(throughput, "run_mode", run_mode)
    monkeypatch.setattr(throughput.modes, "generate", generate)
    return calls, warm


def test_interleaved_median_and_speedup(fake_decoding):
    calls, warm = fake_decoding
    rows = {"AR": ("ar", _Config(10)), "diffusion γ=0.8": ("mask_diffusion", _Config(10))}
    timed = throughput.time_modes({"eager": "m"}, rows, [[1], [2]], (1, 8), repeats=3)
    # One short warm-up generation per mode, before any timed pass.
    assert warm == [("m", "ar", throughput.WARMUP_TOKENS, 0), ("m", "mask_diffusion", 4, 0)]
    # Repeat-major; within a batch size, AR then diffusion on each batch of prompts in turn.
    one_repeat = [
        ("ar", 1, [[1]]),
        ("mask_diffusion", 1, [[1]]),
        ("ar", 1, [[2]]),
        ("mask_diffusion", 1, [[2]]),
        ("ar", 8, [[1], [2]]),
        ("mask_diffusion", 8, [[1], [2]]),
    ]
    assert [call[1:] for call in calls] == one_repeat * 3
    ar1, diff1 = timed["eager", "AR", 1], timed["eager", "diffusion γ=0.8", 1]
    assert ar1.seconds == [4.0, 1.0, 2.0] and ar1.median_seconds == 2.0
    assert diff1.seconds == [1.0, 9.0, 0.5]
    assert ar1.tokens == [[1], [3]]  # the first pass's generations, one per prompt
    assert ar1.stats == {"generated": 20}
    assert ar1.tokens_per_s == 20 / 2.0 and diff1.tokens_per_s == 20 / 1.0
    speedup = throughput.speedups(timed)
    assert speedup["eager", "diffusion γ=0.8", 1] == pytest.approx(2.0)
    assert speedup["eager", "diffusion γ=0.8", 8] == pytest.approx(0.5)
    assert speedup["eager", "AR", 8] == 1.0


def test_conditions_record_threads_and_load():
    import torch

    found = throughput.conditions()
    assert found["threads"] == torch.get_num_threads()
    assert found["load_average"] >= 0.0
