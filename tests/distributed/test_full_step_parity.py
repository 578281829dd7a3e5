"""A complete stage-2 trainer step at TP=2 (± SP), EP=2 and DP=2 equals the TP=1/DP=1 step.

Same global batch (8 samples, micro-batch 1, so every rank accumulates >= 2 micro-batches),
same starting weights, diffusion objective, MoE expert-bias update (see
``tests/distributed/full_step.py``). Compared after the step: the loss, the gradient norm, every
gradient the optimizer applied and every updated denoiser / adaLN parameter and router expert
bias, all gathered to TP=1 through ``dist_checkpointing``.

Tolerances (fp32): the layouts compute the same sums in another order (TP splits matmul
reductions and the vocab softmax, DP/EP all-reduce partial sums), so results agree to a few fp32
ulps of the accumulated values: loss and grad norm to 1e-5 relative, each gradient tensor to
1e-5 of its largest entry. AdamW's first step moves each weight by lr·g/(|g|+eps) ≈ ±lr: that
map is (1/eps)-Lipschitz, so rounding noise in a near-zero gradient becomes a visible weight
change. Each updated weight is therefore held to what its gradient's difference allows,
|Δw| <= lr·|Δg|/eps + 2 fp32 ulps of w — a weight that was not updated, or updated from another
gradient, misses that by ~lr. The expert-bias update counts routed tokens (integers) and moves
by ±rate: exact.

CI: the 2-process layouts run in the default suite; the 4-process ones (TP=2×DP=2, EP=2×DP=2)
are ``slow`` (``bash scripts/test.sh -m slow tests/distributed``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.distributed.full_step import LAYOUTS, MODELS, gatherer, run_step, step_overrides
from tests.distributed.launch import torchrun
from tests.training.fixtures import backbone_checkpoint, data_root, train_backbone  # noqa: F401  (fixtures)

pytestmark = pytest.mark.distributed

LR = 1e-3  # demo_twotower phase 1 peak (warm-up 0: the first step runs at the peak)
ADAM_EPS = 1e-8  # recipes/demo.yaml optimizer.adam_eps
ULP = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def runs(data_root, backbone_checkpoint, tmp_path_factory) -> dict:  # noqa: F811
    """The stage-1 backbone of each model kind and its TP=1/DP=1 reference step."""
    root = tmp_path_factory.mktemp("full_step")
    backbones = {
        "moe": backbone_checkpoint,
        "dense": train_backbone(data_root, root / "dense", *MODELS["dense"]),
    }
    for model, backbone in backbones.items():
        reference = root / f"reference-{model}"
        run_step(_config(model, data_root, backbone, reference), reference)
    return {"root": root, "backbones": backbones}


def _config(model: str, data_root: Path, backbone: Path, run_dir: Path, layout=()):
    from twotower_train.training.recipes import load_config

    return load_config(
        "demo_twotower", step_overrides(model, data_root, backbone, run_dir, list(layout))
    )


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def _compare(name: str, runs: dict, data_root: Path, out: Path) -> dict[str, float]:
    from twotower_train import distributed

    model = LAYOUTS[name][0]
    reference = runs["root"] / f"reference-{model}"
    distributed.initialize(seed=0)  # gather at TP=1 in this process
    cfg = _config(model, data_root, runs["backbones"][model], reference)
    ref_record = json.loads((reference / "record.json").read_text())
    record = json.loads((out / name / "record.json").read_text())
    diffs = {
        "loss": abs(record["loss"] - ref_record["loss"]) / abs(ref_record["loss"]),
        "grad_norm": abs(record["grad_norm"] - ref_record["grad_norm"]) / ref_record["grad_norm"],
    }
    assert diffs["loss"] < 1e-5 and diffs["grad_norm"] < 1e-5, (name, record, ref_record)

    gather = gatherer(cfg)
    ref_grads, grads = gather(reference / "grads"), gather(out / name / "grads")
    ref_weights = gather(reference / "ck" / "iter_0000001")
    weights = gather(out / name / "ck" / "iter_0000001")
    assert ref_weights.keys() == weights.keys() == ref_grads.keys() == grads.keys()
    trained = [k for k in ref_weights if not k.endswith("expert_bias")]
    biases = [k for k in ref_weights if k.endswith("expert_bias")]
    assert any(k.startswith("adaln.t_block.") for k in trained) and (model != "moe" or biases)
    diffs["grads"] = diffs["weights/lr"] = diffs["weights/bound"] = 0.0
    for key in trained:
        diffs["grads"] = max(diffs["grads"], _max_rel(grads[key], ref_grads[key]))
        assert _max_rel(grads[key], ref_grads[key]) < 1e-5, (name, key)
        delta = (weights[key] - ref_weights[key]).abs()
        bound = LR * (grads[key] - ref_grads[key]).abs() / ADAM_EPS
        bound += 2 * ULP * ref_weights[key].abs()
        diffs["weights/lr"] = max(diffs["weights/lr"], float(delta.max()) / LR)
        diffs["weights/bound"] = max(
            diffs["weights/bound"], float((delta / bound.clamp(min=1e-30)).max())
        )
        assert bool((delta <= bound).all()), (name, key, float((delta - bound).max()))
    for key in biases:
        assert not torch.equal(ref_weights[key], torch.zeros_like(ref_weights[key])), key
        torch.testing.assert_close(weights[key], ref_weights[key], rtol=0, atol=0)
    print(f"PARITY {name} " + " ".join(f"{k}={v:.2e}" for k, v in diffs.items()))
    return diffs


def _run_layouts(runs: dict, data_root: Path, nproc: int, out_name: str) -> None:
    names = [n for n, (_, procs, _) in LAYOUTS.items() if procs == nproc]
    out = runs["root"] / out_name
    backbones = [f"{model}={path}" for model, path in runs["backbones"].items()]
    torchrun(
        "train_one_step.py",
        str(data_root),
        str(out),
        *backbones,
        *names,
        nproc=nproc,
        timeout=900,
    )
    for name in names:
        _compare(name, runs, data_root, out)


def test_full_step_two_process_layouts_match_tp1(runs, data_root):  # noqa: F811
    _run_layouts(runs, data_root, 2, "two_process")


@pytest.mark.slow
def test_full_step_four_process_layouts_match_tp1(runs, data_root):  # noqa: F811
    _run_layouts(runs, data_root, 4, "four_process")
