"""2-rank worker (I4): TwoTowerModel under TP=2 (± SP) and EP=2 reproduces TP=1.

One TP=1 model (with non-zero adaLN) is saved with dist_checkpointing and loaded, resharded,
into each layout. Checked per layout: denoiser logits equal TP=1's; after backward the context
tower holds no gradient; the optimizer is built from denoiser (+ adaLN) parameters only; every
adaLN gradient (tables and MLP) equals TP=1's after the tensor-parallel sum that
``finalize_model_grads`` applies to parameters tagged ``sequence_parallel`` (without SP every
rank computes them whole and nothing is summed; with SP each rank holds its positions' share).
"""

import sys

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

import twotower_train  # noqa: F401
from common import report, save_reference
from twotower_train import distributed
from twotower_train.model.config import ParallelConfig, preset
from twotower_train.model.two_tower import TwoTowerModel

LAYOUTS = {
    "tp2": ParallelConfig(tensor_parallel=2),
    "tp2-sp": ParallelConfig(tensor_parallel=2, sequence_parallel=True),
    "ep2": ParallelConfig(expert_parallel=2),
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


def main(ckpt_dir: str) -> None:
    cfg = preset("tiny")
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, cfg.vocab_size, (2, 32), generator=gen)
    noisy = tokens.clone()
    noisy[:, ::3] = cfg.mask_token_id
    t = torch.rand(2, 32 // BLOCK, generator=gen)

    distributed.initialize(seed=1234)
    reference_model = TwoTowerModel.build(cfg)
    with torch.no_grad():
        for p in reference_model.denoiser.adaln.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    reference = run(reference_model, tokens, noisy, t)
    reference_adaln_grads = adaln_grads(reference_model)
    save_reference(reference_model.sharded_state_dict(), ckpt_dir)

    for name, layout in LAYOUTS.items():
        distributed.initialize(
            tensor_parallel=layout.tensor_parallel, expert_parallel=layout.expert_parallel,
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
        report(name, diff)
        report(f"{name}-adaln-grad", grad_diff, "max_rel_diff")
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
