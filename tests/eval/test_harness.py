"""The lm-eval model ``twotower``: loading, generate_until stop sequences, and the tiny local
tasks end to end through ``lm_eval.simple_evaluate`` (offline)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from twotower_train.decoding.samplers import ARConfig, generate_ar
from twotower_train.errors import UserError
from twotower_train.eval.harness import TwoTowerLM
from twotower_train.inference import modes
from twotower_train.model.backbone import forward_logits

TASKS = Path(__file__).parent / "tasks"


@pytest.fixture(scope="module")
def tasks():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS), include_defaults=False)  # skip indexing lm-eval's


@pytest.fixture(scope="module")
def lm(two_tower_checkpoint):
    return TwoTowerLM(pretrained=str(two_tower_checkpoint), sampler="ar", batch_size=4)


class _Request:
    def __init__(self, *args):
        self.args = args


def test_generate_until_stops_at_a_stop_sequence(lm, monkeypatch):
    prompt = "The capital of France is"
    ids = lm.tok_encode(prompt)
    free = generate_ar(lm.model, [ids], ARConfig(max_new_tokens=24, **lm.loaded.sampler_ids()))
    text = lm.tok_decode(free.tokens[0])
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop and stop in text
    runs, original = [], modes.generate

    def recording(*args, **kwargs):
        runs.append(original(*args, **kwargs))
        return runs[-1]

    monkeypatch.setattr(modes, "generate", recording)
    [out] = lm.generate_until([_Request(prompt, {"until": [stop], "max_gen_toks": 24})])
    assert out == text.split(stop)[0]
    assert len(runs[0].tokens[0]) < 24  # the row ended when the stop sequence appeared


def test_loading_errors(tmp_path):
    with pytest.raises(UserError, match="neither a trainer checkpoint"):
        TwoTowerLM(pretrained=str(tmp_path))
    with pytest.raises(UserError, match="pretrained"):
        TwoTowerLM()


def test_bad_knobs_fail_at_construction(lm):
    with pytest.raises(UserError, match="scorer"):
        TwoTowerLM(loaded=lm.loaded, scorer="nope")
    with pytest.raises(UserError, match="confidence_threshold"):
        TwoTowerLM(loaded=lm.loaded, sampler="mask_diffusion", confidence_threshold=2.0)
    with pytest.raises(UserError, match="not a knob"):
        TwoTowerLM(loaded=lm.loaded, sampler="ar", block_size=4)
    with pytest.raises(UserError, match="unknown generation mode"):
        TwoTowerLM(loaded=lm.loaded, sampler="beam")


def test_mask_diffusion_defaults_to_the_trained_block_size(lm):
    """Without block knobs, mask diffusion decodes blocks of the S the model trained at (as
    twotower-generate does), not the sampler config's literal default."""
    # The fixture ends at S = 16, the literal default too: record another S so this can fail.
    loaded = dataclasses.replace(lm.loaded, block_size=8)
    assert modes.build_config("mask_diffusion").block_size != 8
    config = TwoTowerLM(loaded=loaded, sampler="mask_diffusion")._sampler_config({})
    assert (config.block_size, config.steps_per_block) == (8, 8)
    given = TwoTowerLM(loaded=loaded, sampler="mask_diffusion", block_size=2, steps_per_block=1)
    assert (given._sampler_config({}).block_size, given._sampler_config({}).steps_per_block) == (
        2,
        1,
    )


def test_local_tasks_through_simple_evaluate(lm, tasks, two_tower_checkpoint):
    """Both tiny tasks through the registered model; the accuracy and the generations are
    recomputed independently (backbone forward, generate_ar)."""
    from lm_eval import simple_evaluate

    results = simple_evaluate(
        model="twotower",
        model_args=f"pretrained={two_tower_checkpoint},scorer=ar,sampler=ar",
        tasks=["twotower_tiny_mc", "twotower_tiny_gen"],
        task_manager=tasks,
        batch_size=8,
        log_samples=True,
        bootstrap_iters=0,
    )
    mc = results["samples"]["twotower_tiny_mc"]
    assert len(mc) == 20
    correct = 0
    for sample in mc:
        doc = sample["doc"]
        scores = []
        for choice in doc["choices"]:
            ctx, cont = lm._encode_pair(doc["question"], choice)
            seq = torch.tensor([ctx + cont])
            logits = forward_logits(lm.model.backbone, seq)[0].log_softmax(-1)
            rows = logits[len(ctx) - 1 : -1]
            scores.append(float(rows.gather(-1, torch.tensor(cont).unsqueeze(-1)).sum()))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == doc["answer"])
    assert results["results"]["twotower_tiny_mc"]["acc,none"] == pytest.approx(correct / 20)

    gen = results["samples"]["twotower_tiny_gen"]
    assert len(gen) == 20
    for sample in gen[:5]:
        ids = lm.tok_encode(sample["doc"]["prompt"])
        out = generate_ar(lm.model, [ids], ARConfig(max_new_tokens=8, **lm.loaded.sampler_ids()))
        text = lm.tok_decode(out.tokens[0]).split("\n")[0].split(".")[0]
        assert sample["resps"][0][0] == text
    assert 0.0 <= results["results"]["twotower_tiny_gen"]["exact_match,strip"] <= 1.0


def test_mock_ar_scorer_and_diffusion_sampler_run_the_tasks(lm, tasks):
    """The scores are the mock-AR scorer's (not the context tower's) and the generations the
    mask-diffusion sampler's, each recomputed outside lm-eval."""
    from lm_eval import simple_evaluate

    from twotower_train.eval.scoring import score_ar, score_mock_ar

    denoiser = TwoTowerLM(
        loaded=lm.loaded,
        scorer="mock_ar",
        sampler="mask_diffusion",
        block_size=4,
        steps_per_block=2,
        batch_size=8,
    )
    results = simple_evaluate(
        model=denoiser,
        tasks=["twotower_tiny_mc", "twotower_tiny_gen"],
        task_manager=tasks,
        bootstrap_iters=0,
        limit=8,
        log_samples=True,
    )
    assert set(results["results"]) == {"twotower_tiny_mc", "twotower_tiny_gen"}
    ids = lm.loaded.sampler_ids()
    for sample in results["samples"]["twotower_tiny_mc"]:
        pairs = [lm._encode_pair(sample["doc"]["question"], c) for c in sample["doc"]["choices"]]
        got = [float(r[0]) for r in sample["filtered_resps"]]
        mock = [s for s, _ in score_mock_ar(lm.model, pairs, ids["pad_token_id"])]
        assert got == pytest.approx(mock, abs=1e-4)
        assert got != pytest.approx([s for s, _ in score_ar(lm.model, pairs)], abs=1e-4)
    config = modes.build_config(
        "mask_diffusion",
        **ids,
        mask_token_id=lm.loaded.mask_token_id,
        block_size=4,
        steps_per_block=2,
        max_new_tokens=8,
    )
    for sample in results["samples"]["twotower_tiny_gen"][:3]:
        out = modes.generate(
            lm.model, [lm.tok_encode(sample["doc"]["prompt"])], "mask_diffusion", config
        )
        assert sample["resps"][0][0] == lm.tok_decode(out.tokens[0]).split("\n")[0].split(".")[0]


def test_long_requests_keep_their_end(lm):
    """The model reads at most max_length tokens (context + continuation minus its last):
    the start of the context is dropped."""
    from twotower_train.eval.scoring import score_ar

    short = TwoTowerLM(loaded=lm.loaded, max_length=6)
    ctx, cont = list(range(10, 20)), [30, 31, 32]
    [(logprob, _)] = short._loglikelihood_tokens([(None, ctx, cont)], disable_tqdm=True)
    [(expected, _)] = score_ar(lm.model, [(ctx[-4:], cont)])
    assert logprob == pytest.approx(expected, abs=1e-5)


def test_placement_model_args(lm, two_tower_checkpoint):
    """``context_only=true`` reads only the context tower (AR scores unchanged, the denoiser on
    the meta device) and takes the AR scorer and sampler alone; ``device`` moves a model passed
    in ``loaded=`` too; a bad flag is one line."""
    from twotower_train.inference.load import load_for_decoding

    pairs = [(None, lm.tok_encode("The capital of France"), lm.tok_encode(" is Paris"))]
    ar_only = TwoTowerLM(pretrained=str(two_tower_checkpoint), sampler="ar", context_only=True)
    assert ar_only.model.denoiser_device == torch.device("meta")
    assert ar_only._loglikelihood_tokens(pairs) == lm._loglikelihood_tokens(pairs)
    with pytest.raises(UserError, match="context_only=true loads no denoiser"):
        TwoTowerLM(pretrained=str(two_tower_checkpoint), context_only="true")  # mask diffusion
    with pytest.raises(UserError, match="context_only='maybe'; use true or false"):
        TwoTowerLM(pretrained=str(two_tower_checkpoint), sampler="ar", context_only="maybe")
    loaded = load_for_decoding(two_tower_checkpoint)
    moved = TwoTowerLM(loaded=loaded, device="meta", denoiser_device="cpu")
    assert (moved.model.context_device, moved.model.denoiser_device) == (
        torch.device("meta"),
        torch.device("cpu"),
    )
