"""2-rank worker (I4): TwoTowerModel under TP=2 (± SP), EP=2 and TP=2 + SP x EP=2 with whole
experts reproduces TP=1.

One TP=1 model (with non-zero adaLN) is saved with dist_checkpointing and loaded, resharded,
into each layout. Checked per layout: denoiser logits equal TP=1's; after backward the context
tower holds no gradient; the optimizer is built from denoiser (+ adaLN) parameters only; the
adaLN gradient equals TP=1's (it is replicated, so without SP every rank computes it whole).
"""

import sys

import torch
from megatron.core import dist_checkpointing
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
    reference_adaln_grad = reference_model.denoiser.adaln.tables.grad.clone()
    save_reference(reference_model.sharded_state_dict(), ckpt_dir)

    for name, layout in LAYOUTS.items():
        distributed.initialize(
            tensor_parallel=layout.tensor_parallel, expert_parallel=layout.expert_parallel,
            expert_tensor_parallel=layout.expert_tensor_parallel, seed=99,
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
        if not layout.sequence_parallel:
            grad_diff = (model.denoiser.adaln.tables.grad - reference_adaln_grad).abs().max()
            assert grad_diff < 1e-5, f"{name}: adaLN grad differs by {grad_diff}"
        report(name, diff)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
