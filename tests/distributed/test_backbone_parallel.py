"""TP=2 (+SP) and EP=2 backbones reproduce TP=1 logits from the same weights (2 gloo ranks)."""

import pytest

from tests.distributed.launch import torchrun

pytestmark = pytest.mark.distributed


def test_tp2_sp_ep2_match_tp1(tmp_path):
    out = torchrun("backbone_parity.py", str(tmp_path / "ckpt"))
    for layout in ("tp2", "tp2-sp", "ep2"):
        assert f"PARITY {layout} " in out, out
