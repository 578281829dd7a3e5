"""``optimizer.overlap_grad_reduce`` over 2 data-parallel gloo ranks with gradient accumulation
(2 micro-batches per rank and step): buckets all-reduced from the backward hooks during the last
micro-batch give the synchronous path's steps."""

import pytest

from tests.distributed.launch import torchrun
from tests.training.fixtures import data_root  # noqa: F401  (fixture)

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_overlapped_grad_reduce_matches_over_two_ranks(data_root, tmp_path):
    out = torchrun("train_dp2_overlap.py", str(data_root), str(tmp_path))
    runs = {"false": {}, "true": {}}
    for line in out.splitlines():
        if line.startswith("LOSS "):
            _, overlap, step, loss, norm = line.split()
            runs[overlap][int(step)] = (float(loss), float(norm))
    assert sorted(runs["false"]) == [0, 1, 2], out
    assert runs["true"] == runs["false"]
