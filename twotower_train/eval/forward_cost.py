"""What one model forward of each decoding kind costs, and how many MoE experts it touches.

The generation benchmark (``benchmarks/generation.py``) reports tokens/s per mode; these figures
say where that time goes. On any :class:`~twotower_train.decoding.interface.DecodingModel` (a
trainer checkpoint's ``TwoTowerModel`` or an HF export), after a prefill of the prompts:

* ``ar_step`` — ``advance`` over one token, last logits (an AR step; mock-AR's context half),
  each from the cache the previous step returned (so the Mamba states are ones a step made, as
  in decoding: a step from a prefill's states alone can cost a different amount);
* ``denoiser_block`` — ``denoise_block`` over S ``[MASK]`` positions (one mask-diffusion step);
* ``context_advance`` — ``advance`` over a committed block of S tokens (mask diffusion);
* ``verify`` — ``advance`` over S tokens with all logits and per-position states (speculative).

The others are timed from the prefill's cache, kinds interleaved within each repeat, and the
median is reported in milliseconds. :func:`experts_touched` counts, per MoE layer, the distinct
experts the router picks during one forward (mean over layers): a block of S tokens routes to
more experts than one token, and per-expert loops pay for each.

:func:`~twotower_train.decoding.compiled.compiled` puts them under ``torch.compile``;
:func:`compile_stats` says how many graphs dynamo compiled and where it broke them;
:func:`cost_table` prints a benchmark report's figures.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from twotower_train.decoding.batching import static_caches
from twotower_train.decoding.samplers import left_pad
from twotower_train.decoding.unmasking import shifted

KINDS = ("ar_step", "denoiser_block", "context_advance", "verify")


def _sync(model) -> None:
    for device in {model.context_device, model.denoiser_device}:
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def forward_calls(
    model, prompts: list[list[int]], block_size: int, mask_token_id: int, pad_token_id: int
) -> dict[str, Callable[[], object]]:
    """Kind → a call running one forward of that kind after the prefill of ``prompts``."""
    ctx, den = model.context_device, model.denoiser_device
    tokens, valid = left_pad(prompts, pad_token_id, ctx)
    prefill = model.prefill(tokens, valid).cache
    # Decoding's caches: preallocated (static for a compiled view); the AR steps grow their own.
    room, static = 64 + 2 * block_size, static_caches(model)
    cache = prefill.reserve(room, static=static, scratch=block_size)
    batch = len(prompts)
    one = tokens[:, -1:]
    clean = tokens[:, -1:].expand(batch, block_size).contiguous()  # any committed block
    block = torch.full((batch, block_size), mask_token_id, dtype=torch.long, device=den)
    t = torch.ones(batch, device=den)
    den_cache = cache.to(den)
    committed = "last" if shifted(model) else "none"  # what mask diffusion's advance asks for
    grown = {"cache": prefill.reserve(room, static=static, scratch=block_size)}

    def ar_step():  # from the state the previous step left, as AR decoding runs
        grown["cache"] = model.advance(grown["cache"], one, logits="last").cache

    return {
        "ar_step": ar_step,
        "denoiser_block": lambda: model.denoise_block(den_cache, block, t),
        "context_advance": lambda: model.advance(cache, clean, logits=committed),
        "verify": lambda: model.advance(cache, clean, logits="all", position_states=True),
    }


def forward_costs(
    model,
    prompts: list[list[int]],
    block_size: int,
    mask_token_id: int,
    pad_token_id: int,
    repeats: int = 20,
) -> dict[str, float]:
    """Kind → median milliseconds of one forward (``repeats`` rounds, kinds interleaved)."""
    calls = forward_calls(model, prompts, block_size, mask_token_id, pad_token_id)
    for call in calls.values():  # warm-up (and compilation, for a compiled model)
        call()
    times: dict[str, list[float]] = {kind: [] for kind in calls}
    for _ in range(repeats):
        for kind, call in calls.items():
            _sync(model)
            start = time.perf_counter()
            call()
            _sync(model)
            times[kind].append(time.perf_counter() - start)
    return {kind: 1000 * statistics.median(values) for kind, values in times.items()}


def _routers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The MoE routers of ``module``: Megatron's ``TopKRouter`` and transformers' Nemotron-H
    router (a module whose class name ends in ``Router`` or ``TopkRouter``)."""
    return [m for m in module.modules() if type(m).__name__.lower().endswith("router")]


def _chosen(output, experts: int) -> torch.Tensor | None:
    """(tokens, experts) bool of the experts a router output picks, or None if not found.

    Megatron's router returns (probs, routing_map (tokens, E) bool); transformers' returns
    (top-k indices (tokens, k) int, weights) or a (tokens, E) logits tensor is not a choice."""
    parts = output if isinstance(output, tuple) else (output,)
    for part in parts:
        if not isinstance(part, torch.Tensor):
            continue
        if part.dtype == torch.bool and part.shape[-1] == experts:
            return part.reshape(-1, experts)
        if not part.is_floating_point() and part.dtype != torch.bool:
            flat = part.reshape(-1, part.shape[-1]).long()
            picked = torch.zeros(flat.shape[0], experts, dtype=torch.bool, device=part.device)
            return picked.scatter_(1, flat, True)
    return None


def _expert_count(router: torch.nn.Module) -> int | None:
    for name in ("num_experts", "n_routed_experts"):
        value = getattr(router, name, None) or getattr(getattr(router, "config", None), name, None)
        if isinstance(value, int):
            return value
    weight = getattr(router, "weight", None)
    return weight.shape[0] if isinstance(weight, torch.Tensor) else None


def experts_touched(
    model, prompts: list[list[int]], block_size: int, mask_token_id: int, pad_token_id: int
) -> dict[str, float] | None:
    """Kind → distinct experts chosen per MoE layer in one forward (mean over the layers that
    ran); None for a model without routers."""
    routers = [(r, _expert_count(r)) for r in _routers(model)]
    routers = [(r, n) for r, n in routers if n]
    if not routers:
        return None
    calls = forward_calls(model, prompts, block_size, mask_token_id, pad_token_id)
    seen: list[int] = []

    def hook(experts):
        def record(_module, _inputs, output):
            chosen = _chosen(output, experts)
            if chosen is not None:
                seen.append(int(chosen.any(0).sum()))

        return record

    handles = [r.register_forward_hook(hook(n)) for r, n in routers]
    try:
        counts = {}
        for kind, call in calls.items():
            seen.clear()
            call()
            counts[kind] = sum(seen) / len(seen) if seen else float("nan")
    finally:
        for handle in handles:
            handle.remove()
    return counts


def compile_stats() -> dict:
    """What dynamo did over the whole run: graphs compiled (a recompile per new shape or guard
    adds one) and graph breaks (code it left to Python: host syncs, data-dependent branches)."""
    from torch._dynamo.utils import counters

    # Older torch counts breaks under "graph_break", newer under "unimplemented" (by reason).
    breaks = counters["graph_break"] or counters["unimplemented"]
    return {
        "unique_graphs": counters["stats"]["unique_graphs"],
        "graph_breaks": sum(breaks.values()),
        "break_reasons": [r.splitlines()[0][:120] for r in sorted(breaks, key=breaks.get)[-5:]],
    }


def cost_table(report: dict) -> str:
    """ms per forward of each kind (median of ``cost_repeats``), per variant and batch size,
    with the denoiser block's cost over an AR step's, and the experts each forward touches."""
    kinds = KINDS
    head = f"{'forward (ms)':<20}" + "".join(f"{k:>16}" for k in kinds) + f"{'den/AR':>8}"
    lines = [f"S = {report['block_size']}", head, "-" * len(head)]
    for variant, by_batch in report["forward_ms"].items():
        for batch, ms in by_batch.items():
            lines.append(
                f"{f'{variant} {batch}':<20}"
                + "".join(f"{ms[k]:>16.2f}" for k in kinds)
                + f"{ms['denoiser_block'] / ms['ar_step']:>8.2f}"
            )
    if report["experts_touched"]:
        touched = report["experts_touched"]
        lines.append(
            f"{'experts / MoE layer':<20}" + "".join(f"{touched[k]:>16.1f}" for k in kinds)
        )
    if report["compile_error"]:
        lines.append(f"torch.compile failed: {report['compile_error']}")
    for method, why in (report.get("compile_fallbacks") or {}).items():
        lines.append(f"torch.compile failed on {method} mid-run, eager from then on: {why}")
    if report["compile_stats"]:
        stats = report["compile_stats"]
        lines.append(
            f"torch.compile: {stats['unique_graphs']} graphs, {stats['graph_breaks']} graph breaks"
        )
    return "\n".join(lines)
