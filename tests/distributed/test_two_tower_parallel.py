"""I4: TP=1, TP=2 (± SP) and EP=2 two-tower models equal the released formulas' independent
reference (logits and adaLN gradients); the context tower gets no gradient."""

import pytest

from tests.distributed.launch import torchrun

pytestmark = pytest.mark.distributed


def test_two_tower_tp2_sp_ep2_match_tp1(tmp_path):
    out = torchrun("two_tower_parity.py", str(tmp_path / "ckpt"))
    assert "PARITY tp1 " in out, out
    for layout in ("tp2", "tp2-sp", "ep2", "tp2-sp-ep2-etp1"):
        assert f"PARITY {layout} " in out, out
        assert f"PARITY {layout}-adaln-grad " in out, out
