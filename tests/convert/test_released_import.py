"""Fine-tuning the released model: a folder as NVIDIA ships it (scripts/make_released_standin.py:
two transformers NemotronH towers + time tensors under the released names, bf16 with fp32
A_log / D / expert bias, sharded + index, config.json without mask_token_id) →
``import-twotower`` (TP=1 here; TP=2+SP and EP=2 under torchrun) → ``export-hf`` gives the same
tensors byte for byte, the exact key list, shapes and dtypes, and a config the released code reads.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.convert.models import parity_config
from tests.convert.released_standin import folder_tensors, standin
from tests.distributed.launch import torchrun
from twotower_train import distributed
from twotower_train.convert import commands as checkpoints
from twotower_train.convert.hf_files import ConversionError
from twotower_train.convert.nemotron_h import hf_config_from_backbone
from twotower_train.inference.load import load_trained_model


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    config = hf_config_from_backbone(parity_config(), time_step_min=1e-3)
    folder = tmp_path_factory.mktemp("released") / "nvidia"
    return standin.write_folder(folder, config, seed=3, max_shard_bytes=400_000)


def _same_folder(exported, released):
    ours, theirs = folder_tensors(exported), folder_tensors(released)
    assert sorted(ours) == sorted(theirs)
    for name, tensor in theirs.items():
        mine = ours[name]
        assert (mine.dtype, mine.shape) == (tensor.dtype, tensor.shape), name
        assert mine.view(torch.uint8).equal(tensor.view(torch.uint8)), name  # byte-identical


def test_released_folder_is_what_nvidia_ships(released):
    config = json.loads((released / "config.json").read_text())
    assert "mask_token_id" not in config and "layers_block_type" not in config
    assert config["architectures"] == ["NemotronHTwoTowerForCausalLM"]
    assert len(list(released.glob("model-*.safetensors"))) > 3
    dtypes = {t.dtype for t in folder_tensors(released).values()}
    assert dtypes == {torch.bfloat16, torch.float32}


def test_import_then_export_is_the_released_folder(released, tokenizer_dir, tmp_path):
    with pytest.warns(UserWarning, match="time_step_min=0.001"):
        checkpoints.import_twotower(released, tmp_path / "run")
    distributed.initialize(seed=0)
    model, cfg = load_trained_model(tmp_path / "run" / "checkpoints")
    assert cfg.model.mask_token_id == 3  # the released code's default (config.json has none)
    assert cfg.objective_options["mask_token_id"] in (None, 3)
    assert cfg.objective_options["eps"] == 1e-3  # the recipe's options are kept
    assert cfg.objective_options["backbone_checkpoint"] is None  # self-contained
    assert not any(p.requires_grad for p in model.context_tower.parameters())
    assert cfg.model == parity_config()
    out = checkpoints.export_checkpoint(
        tmp_path / "run" / "checkpoints", tmp_path / "hf", tokenizer=tokenizer_dir, dtype="bfloat16"
    )
    _same_folder(out, released)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["NemotronHTwoTowerForCausalLM"]
    assert config["model_type"] == "nemotron_h" and config["dtype"] == "bfloat16"
    assert config["hybrid_override_pattern"] == parity_config().pattern
    assert (config["mask_token_id"], config["block_size"]) == (3, 16)
    assert "denoiser_shift" not in config
    released_config = json.loads((released / "config.json").read_text())
    backbone_fields = set(released_config) - {"auto_map", "torch_dtype", "transformers_version"}
    assert backbone_fields <= set(config), backbone_fields - set(config)
    # Our own export imports again, bit-exact.
    checkpoints.import_twotower(out, tmp_path / "again")
    again = checkpoints.export_checkpoint(
        tmp_path / "again" / "checkpoints",
        tmp_path / "hf_again",
        tokenizer=tokenizer_dir,
        dtype="bfloat16",
    )
    _same_folder(again, released)


def test_import_names_what_is_missing(released, tmp_path):
    index = json.loads((released / "model.safetensors.index.json").read_text())
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in released.iterdir():
        (broken / file.name).symlink_to(file)
    (broken / "model.safetensors.index.json").unlink()
    del index["weight_map"]["denoiser_tower.layers.1.mixer.k_proj.weight"]
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match="'denoiser_tower.layers.1.mixer.k_proj.weight' is"):
        checkpoints.import_twotower(broken, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.distributed
def test_import_at_tp2_and_ep2_exports_the_released_folder(released, tokenizer_dir, tmp_path):
    torchrun("import_released.py", str(released), str(tmp_path), timeout=900)
    for layout, key in (("tp2", "tensor_parallel"), ("ep2", "expert_parallel")):
        meta = json.loads(
            (tmp_path / layout / "checkpoints" / "iter_0000000" / "meta.json").read_text()
        )
        assert meta["layout"][key] == 2, layout
        out = checkpoints.export_checkpoint(
            tmp_path / layout / "checkpoints",
            tmp_path / f"hf_{layout}",
            tokenizer=tokenizer_dir,
            dtype="bfloat16",
        )
        _same_folder(out, released)
