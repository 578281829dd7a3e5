"""2-rank worker (I4): TwoTowerModel under TP=2 (± SP), EP=2 and TP=2 + SP x EP=2 with whole
experts reproduces TP=1.

The reference is the released formulas written independently of the model
(tests/model/released_reference.py), run at TP=1; the TP=1 model must agree with it. One TP=1 model
(adaLN away from its identity init) is saved with dist_checkpointing and loaded, resharded,
into each layout. Checked per layout: denoiser logits equal TP=1's; after backward the context
tower holds no gradient; the optimizer is built from denoiser (+ adaLN) parameters only; every
adaLN gradient (tables and MLP) equals TP=1's after the tensor-parallel sum that
``finalize_model_grads`` applies to parameters tagged ``sequence_parallel`` (without SP every
rank computes them whole and nothing is summed; with SP each rank holds its positions' share);
the head over masked positions only gives TP=1's logits there and, within the layout, the same
gradients as the head over every position (an odd masked count exercises the SP padding).
"""

import sys

import torch
import torch.distributed as dist
from common import report, save_reference
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

import twotower_train  # noqa: F401
from tests.model.released_reference import released_denoiser
from twotower_train import distributed
from twotower_train.model.config import ParallelConfig, preset
from twotower_train.model.two_tower import TwoTowerModel

LAYOUTS = {
    "tp2": ParallelConfig(tensor_parallel=2),
    "tp2-sp": ParallelConfig(tensor_parallel=2, sequence_parallel=True),
    "ep2": ParallelConfig(expert_parallel=2),
    # The nano_ep8 shape in small: dense layers TP=2 + SP, whole experts EP=2 on the same ranks.
    "tp2-sp-ep2-etp1": ParallelConfig(
        tensor_parallel=2, sequence_parallel=True, expert_parallel=2, expert_tensor_parallel=1
    ),
}
BLOCK = 8


def run(model, tokens, noisy, t):
    logits = model(tokens, noisy, t, BLOCK)
    full = gather_from_tensor_model_parallel_region(logits)
    full.float().logsumexp(-1).mean().backward()
    return full.detach()


def adaln_grads(model) -> dict[str, torch.Tensor]:
    """adaLN gradients as the optimizer sees them: summed over TP where tagged
    ``sequence_parallel`` and SP is on (what finalize_model_grads does)."""
    grads = {}
    for name, p in model.denoiser.adaln.named_parameters():
        grad = p.grad.clone()
        if model.config.sequence_parallel and getattr(p, "sequence_parallel", False):
            dist.all_reduce(grad, group=parallel_state.get_tensor_model_parallel_group())
        grads[name] = grad
    return grads


def check_masked_head(model, tokens, noisy, t, masked, reference, name) -> float:
    """Masked-only head vs TP=1's logits there, and vs this layout's full head in backward."""
    grads = []
    for positions in (None, masked):
        model.zero_grad(set_to_none=True)
        logits = gather_from_tensor_model_parallel_region(
            model(tokens, noisy, t, BLOCK, positions=positions)
        )
        selected = logits if positions is not None else logits[masked]  # (n, V)
        selected.float().logsumexp(-1).mean().backward()
        for param in model.denoiser.parameters():
            if param.grad is not None and getattr(param, "sequence_parallel", False):
                # Under SP each rank holds a partial gradient over its rows (what Megatron's
                # finalize_model_grads all-reduces); only the sum is comparable.
                torch.distributed.all_reduce(
                    param.grad, group=parallel_state.get_tensor_model_parallel_group()
                )
        grads.append(
            {n: p.grad.clone() for n, p in model.denoiser.named_parameters() if p.grad is not None}
        )
    diff = (selected.detach() - reference[masked]).abs().max().item()
    assert diff < 1e-4, f"{name}: masked head logits differ from TP1 by {diff}"
    assert grads[0].keys() == grads[1].keys() and grads[0], name
    for key in grads[0]:
        scale = grads[0][key].abs().max().item()
        err = (grads[0][key] - grads[1][key]).abs().max().item()
        assert err <= 1e-5 * scale + 1e-12, f"{name}: masked-head grad of {key} off by {err}"
    return diff


def main(ckpt_dir: str) -> None:
    cfg = preset("tiny")
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, cfg.vocab_size, (2, 32), generator=gen)
    noisy = tokens.clone()
    noisy[:, ::3] = cfg.mask_token_id
    noisy[0, 1] = cfg.mask_token_id  # 23 masked positions: not a multiple of TP
    masked = noisy == cfg.mask_token_id
    t = torch.rand(2, 32 // BLOCK, generator=gen)

    distributed.initialize(seed=1234)
    reference_model = TwoTowerModel.build(cfg)
    with torch.no_grad():
        for p in reference_model.denoiser.adaln.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    # The reference every layout is compared with: the released formulas written independently
    # (tests/model/released_reference.py) at TP=1; the model itself at TP=1 must agree with it.
    ours = run(reference_model, tokens, noisy, t)
    ours_adaln_grads = adaln_grads(reference_model)
    reference_model.zero_grad(set_to_none=True)
    reference = released_denoiser(reference_model, tokens, noisy, t, BLOCK)
    reference.float().logsumexp(-1).mean().backward()
    reference = reference.detach()
    reference_adaln_grads = adaln_grads(reference_model)
    tp1_diff = (ours - reference).abs().max().item()
    assert tp1_diff < 1e-5, f"tp1: logits differ from the released reference by {tp1_diff}"
    for param, grad in ours_adaln_grads.items():
        ref = reference_adaln_grads[param]
        rel = ((grad - ref).abs().max() / ref.abs().max()).item()
        assert rel < 1e-5, f"tp1: adaLN {param} grad differs from the released reference by {rel}"
    report("tp1", tp1_diff)
    save_reference(reference_model.sharded_state_dict(), ckpt_dir)

    for name, layout in LAYOUTS.items():
        distributed.initialize(
            tensor_parallel=layout.tensor_parallel,
            expert_parallel=layout.expert_parallel,
            expert_tensor_parallel=layout.expert_tensor_parallel,
            seed=99,
        )
        model = TwoTowerModel.build(cfg, layout)
        model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), ckpt_dir))
        # Megatron refuses MoE + TP>1 without SP in training mode; eval changes nothing here
        # (no dropout) and backward still runs.
        model.train(layout.sequence_parallel or layout.tensor_parallel == 1)
        logits = run(model, tokens, noisy, t)
        diff = (logits - reference).abs().max().item()
        # fp32; TP/EP only re-associate sums: ~1e-7 observed.
        assert diff < 1e-4, f"{name}: max |logits - TP1| = {diff}"
        assert all(p.grad is None for p in model.context_tower.parameters()), name
        optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        assert in_optimizer == {id(p) for p in model.denoiser.parameters()}, name
        assert not in_optimizer & {id(p) for p in model.context_tower.parameters()}, name
        grad_diff = 0.0
        for param, grad in adaln_grads(model).items():
            ref = reference_adaln_grads[param]
            # Relative to the gradient's scale: fp32 sums of the same terms in another order
            # (~1e-7 relative observed); the TP-double-count bug this guards against is 1.0.
            rel = ((grad - ref).abs().max() / ref.abs().max()).item()
            assert rel < 1e-5, f"{name}: adaLN {param} grad differs by {rel:.2e} (relative)"
            grad_diff = max(grad_diff, rel)
        masked_head_diff = check_masked_head(model, tokens, noisy, t, masked, reference, name)
        report(name, max(diff, masked_head_diff))
        report(f"{name}-adaln-grad", grad_diff, "max_rel_diff")
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
