"""Per-step diffusion metrics as additive sums (exact across micro-batches and DP ranks).

:func:`diffusion_step_sums` returns a :class:`MetricSums` — only sums and counts, so combining
micro-batches (``+``) or data-parallel ranks (``to_tensor`` → ``all_reduce(SUM)`` →
``from_tensor``) is exact; :meth:`MetricSums.summary` turns them into the logged ratios:

* ``masked_acc``  — argmax accuracy over masked positions;
* ``masked_nll``  — mean NLL over masked positions (the MEAN loss, unweighted);
* ``mean_t``      — mean per-block time over all blocks;
* ``nll_t{lo}-{hi}`` — mean masked NLL for tokens whose block time lies in ``(lo, hi]``;
  buckets split ``(0, 1]`` evenly (4 by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["MetricSums", "diffusion_step_sums"]


def _bucket_name(index: int, num_buckets: int) -> str:
    return f"{index / num_buckets:.2f}-{(index + 1) / num_buckets:.2f}"


@dataclass(frozen=True)
class MetricSums:
    """Additive per-step statistics; ``values`` maps a name to a sum or a count."""

    values: dict[str, float]

    def __add__(self, other: MetricSums) -> MetricSums:
        if self.values.keys() != other.values.keys():
            raise ValueError("cannot add MetricSums with different keys (different t buckets?)")
        return MetricSums({k: self.values[k] + other.values[k] for k in self.values})

    def to_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Values in key order as a float64 vector, for ``torch.distributed.all_reduce``."""
        return torch.tensor(list(self.values.values()), dtype=torch.float64, device=device)

    def from_tensor(self, reduced: torch.Tensor) -> MetricSums:
        """Rebuild with this object's keys from a (reduced) vector made by :meth:`to_tensor`."""
        return MetricSums(dict(zip(self.values.keys(), reduced.tolist(), strict=True)))

    def summary(self) -> dict[str, float]:
        """Ratios ready for logging (NaN where a count is zero)."""
        v = self.values

        def ratio(num: str, den: str) -> float:
            return v[num] / v[den] if v[den] > 0 else float("nan")

        out = {
            "masked_acc": ratio("correct", "num_masked"),
            "masked_nll": ratio("nll_sum", "num_masked"),
            "mean_t": ratio("t_sum", "num_blocks"),
            "num_masked": v["num_masked"],
        }
        for key in v:
            if key.startswith("nll_sum_t"):
                bucket = key[len("nll_sum_t") :]
                out[f"nll_t{bucket}"] = ratio(key, f"num_masked_t{bucket}")
        return out


def diffusion_step_sums(
    token_nll: torch.Tensor,
    predictions: torch.Tensor,
    targets: torch.Tensor,
    masked: torch.Tensor,
    t_block: torch.Tensor,
    *,
    num_t_buckets: int = 4,
) -> MetricSums:
    """Sums for one micro-batch.

    Args:
        token_nll: (b, L) per-token NLL (detached inside).
        predictions: (b, L) argmax token ids.
        targets: (b, L) clean token ids.
        masked: (b, L) bool loss positions.
        t_block: (b, n_blocks) per-block time (the one fed to the denoiser).
        num_t_buckets: number of equal buckets over (0, 1] for the NLL-by-t breakdown.
    """
    if num_t_buckets <= 0:
        raise ValueError(f"num_t_buckets must be positive, got {num_t_buckets}")
    batch, seq_len = token_nll.shape
    n_blocks = t_block.shape[1]
    if t_block.shape[0] != batch or n_blocks == 0 or seq_len % n_blocks != 0:
        raise ValueError(
            f"t_block {tuple(t_block.shape)} is not (b, n_blocks) for tokens {(batch, seq_len)}"
        )
    masked = masked.to(torch.bool)
    nll = torch.where(masked, token_nll.detach().double(), 0.0)  # (b, L)
    t_pos = t_block.detach().double().repeat_interleave(seq_len // n_blocks, dim=1)  # (b, L)
    # Bucket k holds t in (k/B, (k+1)/B]; t = 0 (never at a masked position) falls in bucket 0.
    bucket = (torch.ceil(t_pos * num_t_buckets).long() - 1).clamp(0, num_t_buckets - 1)
    onehot = torch.nn.functional.one_hot(bucket, num_t_buckets).double()  # (b, L, B)
    onehot = onehot * masked.unsqueeze(-1)
    parts = [
        ((predictions == targets) & masked).sum().double().reshape(1),
        masked.sum().double().reshape(1),
        nll.sum().reshape(1),
        t_block.detach().double().sum().reshape(1),
        torch.tensor([float(t_block.numel())], dtype=torch.float64, device=nll.device),
        (nll.unsqueeze(-1) * onehot).sum(dim=(0, 1)),  # (B,)
        onehot.sum(dim=(0, 1)),  # (B,)
    ]
    flat = torch.cat(parts).tolist()  # one device sync for all sums
    names = ["correct", "num_masked", "nll_sum", "t_sum", "num_blocks"]
    names += [f"nll_sum_t{_bucket_name(k, num_t_buckets)}" for k in range(num_t_buckets)]
    names += [f"num_masked_t{_bucket_name(k, num_t_buckets)}" for k in range(num_t_buckets)]
    return MetricSums(dict(zip(names, flat, strict=True)))
