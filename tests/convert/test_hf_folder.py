"""HF folders: save/load round trips, transformers' own loader, and one clear error per defect."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from tests.convert.models import (
    LOGIT_ATOL,
    hf_logits,
    megatron_logits,
    parity_config,
    random_hf_model,
    random_megatron_model,
)
from twotower_train.convert.nemotron_h import (
    ConversionError,
    hf_to_megatron_state,
    load_hf_folder,
    save_hf_folder,
)


def _state(model):
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


@pytest.mark.parametrize("max_shard_bytes", [5 * 2**30, 200_000])
def test_save_load_round_trip(single_process, tmp_path, max_shard_bytes):
    cfg = parity_config()
    state = _state(random_megatron_model(cfg))
    folder = save_hf_folder(cfg, state, tmp_path / "hf", max_shard_bytes=max_shard_bytes)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert (len(shards) > 1) == (max_shard_bytes < 5 * 2**30)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["config.json", "generation_config.json", "model.safetensors.index.json", *shards]
    )
    loaded_cfg, loaded = load_hf_folder(folder, naming="local")
    assert loaded_cfg == cfg
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary folder left behind


def test_transformers_loads_our_folder_and_matches_megatron(single_process, tmp_path):
    cfg = parity_config()
    megatron = random_megatron_model(cfg, seed=3)
    folder = save_hf_folder(cfg, _state(megatron), tmp_path / "hf", max_shard_bytes=300_000)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    # no dt clamp; values, not the container (config.json has no tuples: transformers may give a list)
    assert list(hf.model.layers[0].mixer.time_step_limit) == [0.0, float("inf")]
    tokens = torch.randint(0, cfg.vocab_size, (2, 21))
    torch.testing.assert_close(
        hf_logits(hf, tokens), megatron_logits(megatron, tokens), rtol=0, atol=LOGIT_ATOL
    )


def test_we_load_a_folder_written_by_transformers(single_process, tmp_path):
    cfg = parity_config()
    hf = random_hf_model(cfg)
    hf.save_pretrained(tmp_path / "hf")
    loaded_cfg, state = load_hf_folder(tmp_path / "hf", naming="local")
    assert loaded_cfg == cfg
    expected = hf_to_megatron_state(hf.state_dict(), cfg, naming="local")
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_overwrite_is_explicit(single_process, tmp_path):
    cfg = parity_config()
    state = _state(random_megatron_model(cfg))
    save_hf_folder(cfg, state, tmp_path / "hf")
    with pytest.raises(ConversionError, match="already exists.*overwrite=True"):
        save_hf_folder(cfg, state, tmp_path / "hf")
    save_hf_folder(cfg, state, tmp_path / "hf", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


@pytest.fixture
def saved(single_process, tmp_path):
    cfg = parity_config()
    return save_hf_folder(cfg, _state(random_megatron_model(cfg)), tmp_path / "hf")


def test_missing_config_json(saved):
    (saved / "config.json").unlink()
    with pytest.raises(ConversionError, match=r"hf/config.json not found"):
        load_hf_folder(saved)


def test_missing_tensor_in_single_file(saved):
    shard = saved / "model-00001-of-00001.safetensors"
    tensors = load_file(shard)
    del tensors["backbone.layers.2.mixer.gate.weight"]
    (saved / "model.safetensors.index.json").unlink()
    save_file(tensors, saved / "model.safetensors")
    shard.unlink()
    with pytest.raises(
        ConversionError,
        match=r"'backbone.layers.2.mixer.gate.weight' is missing from .*hf/model.safetensors$",
    ):
        load_hf_folder(saved)


def test_tensor_listed_in_index_but_absent_from_shard(saved):
    shard = saved / "model-00001-of-00001.safetensors"
    tensors = load_file(shard)
    del tensors["backbone.layers.1.mixer.k_proj.weight"]
    save_file(tensors, shard)
    with pytest.raises(
        ConversionError,
        match=r"'backbone.layers.1.mixer.k_proj.weight' is missing from .*00001-of-00001",
    ):
        load_hf_folder(saved)


def test_missing_shard_file(saved):
    (saved / "model-00001-of-00001.safetensors").unlink()
    with pytest.raises(
        ConversionError,
        match=r"shard listed in model.safetensors.index.json: .*model-00001-of-00001.safetensors is missing",
    ):
        load_hf_folder(saved)


def _add_tensor(folder, name):
    shard = folder / "model-00001-of-00001.safetensors"
    save_file(load_file(shard) | {name: torch.ones(4)}, shard)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"][name] = shard.name
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def test_unexpected_tensor_is_named(saved):
    _add_tensor(saved, "backbone.layers.0.mixer.extra.weight")
    with pytest.raises(ConversionError, match=r"1 HF tensor\(s\) have no counterpart.*mixer.extra"):
        load_hf_folder(saved)


def test_mtp_tensors_are_skipped_with_a_warning(saved):
    _add_tensor(saved, "mtp.layers.0.norm.weight")
    with pytest.warns(UserWarning, match=r"skipping 1 multi-token-prediction .*mtp.layers.0.norm"):
        load_hf_folder(saved)
