"""TP=2 (+SP), EP=2 and TP=2 x EP=2 with whole experts (expert_tensor_parallel=1) backbones
reproduce TP=1 logits from the same weights (2 gloo ranks)."""

import pytest

from tests.distributed.launch import torchrun

pytestmark = pytest.mark.distributed


def test_tp2_sp_ep2_match_tp1(tmp_path):
    out = torchrun("backbone_parity.py", str(tmp_path / "ckpt"))
    for layout in ("tp2", "tp2-sp", "ep2", "tp2-sp-ep2-etp1", "tp2-sp-etp2"):
        assert f"PARITY {layout} " in out, out
