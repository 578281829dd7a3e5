"""The converter under TP=2 (+SP) / EP=2 on 2 gloo ranks (worker ``convert_parallel.py``):

* an export of a checkpoint trained at TP=2+SP or EP=2 equals, tensor for tensor, the same
  checkpoint loaded at TP=1, and computes what the parallel model computed;
* ``import-hf --tp 2`` writes a TP=2 checkpoint whose model gives the HF model's logits.

Tolerance: fp32 logits, |Δ| ≤ 1e-4 (TP/EP and the export only re-associate sums; ~1e-6).
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.convert.models import LOGIT_ATOL, random_hf_model
from tests.convert.two_tower_models import export_module, load_export
from tests.distributed.launch import torchrun
from tests.training.fixtures import data_root  # noqa: F401  (fixture)
from twotower_train import distributed
from twotower_train.convert import commands as checkpoints
from twotower_train.convert.two_tower import megatron_to_export_state
from twotower_train.inference.load import load_trained_model
from twotower_train.model.backbone import forward_logits
from twotower_train.model.config import preset

pytestmark = pytest.mark.distributed
BLOCK = 16


def _inputs():
    gen = torch.Generator().manual_seed(0)  # as the worker draws them
    clean = torch.randint(4, 512, (2, 64), generator=gen)
    noisy = clean.clone()
    noisy[torch.rand(clean.shape, generator=gen) < 0.5] = 3
    return clean, noisy, torch.rand(2, 64 // BLOCK, generator=gen)


def test_export_and_import_under_tp_and_ep(data_root, tmp_path):  # noqa: F811
    cfg = preset("tiny", vocab_size=512)
    hf = random_hf_model(cfg, seed=0)
    hf.save_pretrained(tmp_path / "hub")
    checkpoints.import_hf(tmp_path / "hub", tmp_path / "stage1")
    out = tmp_path / "out"
    torchrun(
        "convert_parallel.py",
        str(data_root),
        str(tmp_path / "hub"),
        str(tmp_path / "stage1" / "checkpoints"),
        str(out),
        timeout=900,
    )

    # import-hf --tp 2: a TP=2 checkpoint of the HF weights.
    imported = out / "imported_tp2" / "checkpoints"
    meta = json.loads((imported / "iter_0000000" / "meta.json").read_text())
    assert meta["layout"]["tensor_parallel"] == 2
    distributed.initialize(seed=0)
    backbone, _ = load_trained_model(imported)
    tokens = torch.randint(4, 512, (2, 21), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(
            forward_logits(backbone, tokens), hf(input_ids=tokens).logits, rtol=0, atol=LOGIT_ATOL
        )

    clean, noisy, t = _inputs()
    for layout in ("tp2", "ep2"):
        run = out / layout
        folder = checkpoints.export_checkpoint(run / "ck", tmp_path / f"hf_{layout}")
        tp1 = torch.load(run / "tp1_state.pt", weights_only=False)
        expected = megatron_to_export_state(tp1, cfg)
        exported = load_file(folder / "model-00001-of-00001.safetensors")
        assert exported.keys() == expected.keys(), layout
        assert all(torch.equal(exported[k], expected[k]) for k in expected), layout

        reference = torch.load(run / "reference.pt")
        model = load_export(folder)
        context = model.prefill(clean, logits="all").logits
        torch.testing.assert_close(context, reference["context"], rtol=0, atol=LOGIT_ATOL)
        empty = export_module(model, "cache").ContextCache()
        worst = 0.0
        for b in range(clean.shape[1] // BLOCK):
            p, end = b * BLOCK, (b + 1) * BLOCK
            cache = model.prefill(clean[:, :p], logits="none").cache if p else empty
            block = model.denoise_block(cache, noisy[:, p:end], t[:, b])
            torch.testing.assert_close(
                block, reference["denoiser"][:, p:end], rtol=0, atol=LOGIT_ATOL
            )
            worst = max(worst, (block - reference["denoiser"][:, p:end]).abs().max().item())
        print(
            f"PARITY {layout} export vs parallel model: context "
            f"{(context - reference['context']).abs().max().item():.2e}, denoiser {worst:.2e}"
        )
