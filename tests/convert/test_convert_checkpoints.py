"""Trainer checkpoints ↔ HF folders (what ``twotower-convert`` runs), in process: import of both
on-disk layouts, the stage-1 and two-tower round trips bit-exact, the export's parity."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.convert.hub_folders import MTP_TENSORS, hub_folder, module_layout_folder
from tests.convert.models import LOGIT_ATOL, parity_config
from tests.convert.two_tower_models import load_export, random_two_tower
from twotower_train import distributed
from twotower_train.convert import commands as checkpoints
from twotower_train.convert.nemotron_h import hf_to_megatron_state
from twotower_train.inference.load import load_trained_model
from twotower_train.model.backbone import forward_logits


def _state(model):
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


def _loaded(path):
    distributed.initialize(seed=0)
    model, cfg = load_trained_model(path)
    return _state(model), cfg


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """The Hub-layout stand-in imported as a stage-1 run (and the HF model it holds)."""
    root = tmp_path_factory.mktemp("stage1")
    hf, folder = hub_folder(root / "hub", parity_config())
    with pytest.warns(UserWarning, match="skipping 2 multi-token-prediction tensor"):
        checkpoints.import_hf(folder, root / "run")
    return hf, folder, root / "run"


@pytest.fixture(scope="module")
def stage2(stage1, tmp_path_factory):
    """A stage-2 checkpoint as training writes it: the denoiser + a verified reference to the
    stage-1 checkpoint (whose weights are this model's context tower)."""
    _, _, stage1_run = stage1
    distributed.initialize(seed=0)
    model = random_two_tower(parity_config(), seed=0)  # context tower = the hub model (seed 0)
    out = tmp_path_factory.mktemp("stage2") / "run"
    objective = {"name": "diffusion", "backbone_checkpoint": str(stage1_run / "checkpoints")}
    checkpoints.write_trainer_checkpoint(
        out, model.cfg, _state(model), objective, tp=1, ep=1, recipe="demo_twotower"
    )
    return model, out


def test_import_accepts_both_layouts_bit_exact(stage1, tmp_path):
    hf, hub, run = stage1
    hub_names = set(load_file(next(hub.glob("*.safetensors"))))
    assert "backbone.layers.2.mixer.experts.3.up_proj.weight" in hub_names  # per-expert
    expected = hf_to_megatron_state(hf.state_dict(), parity_config(), naming="local")
    hub_state, cfg = _loaded(run / "checkpoints")
    assert cfg.objective_name == "ar" and cfg.model == parity_config()
    assert hub_state.keys() == expected.keys()
    assert all(torch.equal(hub_state[k], expected[k]) for k in expected)
    module_hf, folder = module_layout_folder(tmp_path / "module", parity_config(), seed=0)
    assert any(".mixer.experts.up_proj" in k for k in load_file(next(folder.glob("*.safetensors"))))
    checkpoints.import_hf(folder, tmp_path / "run")
    module_state, _ = _loaded(tmp_path / "run" / "checkpoints")
    assert all(torch.equal(module_state[k], expected[k]) for k in expected)


def test_stage1_export_is_the_hub_folder_again(stage1, tokenizer_dir, tmp_path):
    """HF → Megatron checkpoint → HF, bit-exact (MTP tensors aside), and stock transformers
    loads the result without remote code."""
    hf, folder, run = stage1
    out = checkpoints.export_checkpoint(
        run / "checkpoints", tmp_path / "hf", tokenizer=tokenizer_dir
    )
    original = {
        k: v
        for k, v in load_file(next(folder.glob("*.safetensors"))).items()
        if k not in MTP_TENSORS
    }
    exported = load_file(out / "model-00001-of-00001.safetensors")
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[k], original[k]) for k in original)
    assert "auto_map" not in json.loads((out / "config.json").read_text())
    stock = AutoModelForCausalLM.from_pretrained(out).eval()
    tokens = torch.randint(4, 4096, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            stock(input_ids=tokens).logits, hf(input_ids=tokens).logits, rtol=0, atol=LOGIT_ATOL
        )


def test_two_tower_checkpoint_export_import_round_trip(stage2, tokenizer_dir, tmp_path):
    model, run = stage2
    original, cfg = _loaded(run / "checkpoints")
    assert cfg.objective_options["backbone_checkpoint"]  # denoiser + reference, as trained
    folder = checkpoints.export_checkpoint(
        run / "checkpoints", tmp_path / "hf", tokenizer=tokenizer_dir
    )
    assert json.loads((folder / "config.json").read_text())["block_size"] == 16  # last phase
    checkpoints.import_twotower(folder, tmp_path / "again")
    back, again_cfg = _loaded(tmp_path / "again" / "checkpoints")
    assert again_cfg.objective_options["backbone_checkpoint"] is None  # self-contained
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)
    assert all(torch.equal(original[k], v) for k, v in _state(model).items())


def test_exported_checkpoint_computes_the_megatron_model(stage2, tokenizer_dir, tmp_path):
    model, run = stage2
    hf = load_export(
        checkpoints.export_checkpoint(run / "checkpoints", tmp_path / "hf", tokenizer=tokenizer_dir)
    )
    tokens = torch.randint(4, 4096, (2, 17), generator=torch.Generator().manual_seed(1))
    block = torch.full((2, 8), 3)
    t = torch.ones(2)
    with torch.no_grad():
        torch.testing.assert_close(
            hf(input_ids=tokens).logits,
            forward_logits(model.backbone, tokens),
            rtol=0,
            atol=LOGIT_ATOL,
        )
    ours = model.denoise_block(model.prefill(tokens, logits="none").cache, block, t)
    theirs = hf.denoise_block(hf.prefill(tokens, logits="none").cache, block, t)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=LOGIT_ATOL)


def test_bf16_export_keeps_what_a_bf16_model_holds_in_fp32(stage2, tokenizer_dir, tmp_path):
    _, run = stage2
    bf16, _ = load_trained_model(run / "checkpoints", dtype=torch.bfloat16)
    held = {p.dtype for n, p in bf16.named_parameters() if n.endswith(("A_log", ".D"))}
    assert held == {torch.float32}  # Megatron's own rule, which the export must follow
    folder = checkpoints.export_checkpoint(
        run / "checkpoints", tmp_path / "hf", tokenizer=tokenizer_dir, dtype="bfloat16"
    )
    written = {}
    for shard in folder.glob("model-*.safetensors"):
        written.update(load_file(shard))
    kept = {n: t.dtype for n, t in written.items() if n.endswith(("A_log", ".D"))}
    assert kept and set(kept.values()) == {torch.float32}, kept
