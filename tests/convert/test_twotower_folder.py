"""The two-tower export folder: its files, bit-exact round trips, what transformers does with it
(remote code, stock classes, save_pretrained, pipelines, tokenizer), and its read errors."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from tests.convert.models import LOGIT_ATOL
from tests.convert.two_tower_models import export, load_export, random_two_tower
from twotower_train import decoding, distributed
from twotower_train.convert.hf_export import MODELING_FILES, TEMPLATE_DIR
from twotower_train.convert.hf_files import ConversionError
from twotower_train.convert.nemotron_h import save_hf_folder
from twotower_train.convert.two_tower import (
    code_files,
    load_twotower_folder,
    megatron_to_export_state,
    save_twotower_folder,
)
from twotower_train.model.backbone import forward_logits


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer):
    distributed.initialize(seed=0)
    model = random_two_tower(seed=2)
    return model, export(model, tmp_path_factory.mktemp("export") / "hf", tokenizer=tokenizer)


def _state(model):
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


def test_folder_contents(exported):
    model, folder = exported
    names = {p.name for p in folder.iterdir()}
    shipped = [*MODELING_FILES, *(f"{m}.py" for m in decoding.PORTABLE_MODULES)]
    assert names == {
        "config.json",
        "generation_config.json",
        "model-00001-of-00001.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        *shipped,
    }
    for file in code_files():  # verbatim copies: one sampler algorithm
        assert (folder / file.name).read_bytes() == file.read_bytes()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "nemotron_h"
    assert config["architectures"] == ["NemotronHTwoTowerForCausalLM"]
    assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_nemotron_twotower.")
    assert (config["block_size"], config["mask_token_id"]) == (8, 3)
    assert not [key for key in config if key.startswith("adaln")]  # the released config has none
    assert config["time_step_min"] == 0.0  # no dt clamp: Megatron trains without one


def test_shipped_modules_import_only_torch():
    """The portable modules and the modeling code import torch / transformers / the standard
    library and each other (relative), nothing of this package: the export is self-contained."""
    allowed = {"torch", "transformers", *sys.stdlib_module_names}
    for file in code_files():
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{file.name} imports {roots - allowed}"
    assert {f.name for f in code_files()} >= {
        f.name for f in TEMPLATE_DIR.glob("*_nemotron_twotower.py")
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_bit_exact(exported, tmp_path, dtype):
    model, _ = exported
    state = {k: v.to(dtype) for k, v in _state(model).items()}
    folder = save_twotower_folder(
        model.cfg, state, tmp_path / "hf", block_size=8, max_shard_bytes=300_000
    )
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    cfg, back, config = load_twotower_folder(folder, naming="local")
    assert cfg == model.cfg and config.block_size == 8
    assert back.keys() == state.keys()
    for name, tensor in state.items():
        assert back[name].dtype == dtype and torch.equal(back[name], tensor), name


def test_round_trip_keeps_each_tensors_own_dtype(exported, tmp_path):
    """A bf16 model keeps its Mamba A_log, D and dt_bias in fp32: a folder of mixed dtypes
    reads back with every tensor in the dtype it was saved in, bit-exact."""
    model, _ = exported
    fp32 = ("A_log", ".D", "dt_bias")
    state = {
        k: v.to(torch.float32 if k.endswith(fp32) else torch.bfloat16)
        for k, v in _state(model).items()
    }
    assert sum(v.dtype == torch.float32 for v in state.values()) >= 3
    folder = save_twotower_folder(model.cfg, state, tmp_path / "hf", block_size=8)
    _, back, _ = load_twotower_folder(folder, naming="local")
    assert back.keys() == state.keys()
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    written = {}
    for shard in folder.glob("model-*.safetensors"):
        written.update(load_file(shard))
    assert {k for k, v in written.items() if v.dtype == torch.float32} == {
        k for k in written if k.endswith(fp32)
    }


def test_save_pretrained_keeps_the_layout(exported, tmp_path):
    """No transformers name conversion applies: a re-save has our names and values."""
    _, folder = exported
    hf = load_export(folder)
    hf.save_pretrained(tmp_path / "again")
    ours = load_file(folder / "model-00001-of-00001.safetensors")
    again = {}
    for shard in (tmp_path / "again").glob("*.safetensors"):
        again.update(load_file(shard))
    assert again.keys() == ours.keys()
    assert all(torch.equal(again[k], ours[k]) for k in ours)


def test_export_class_loads_the_released_layout_exactly(exported):
    """Our modeling class holds the released module names: loading the folder reports no
    missing or unexpected key, and forward() is the context tower's causal LM."""
    model, folder = exported
    hf, info = AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=True, output_loading_info=True
    )
    assert not any(info.values()), info
    assert type(hf).__name__ == "NemotronHTwoTowerForCausalLM"
    tokens = torch.randint(4, 4096, (2, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            hf.eval()(input_ids=tokens).logits,
            forward_logits(model.backbone, tokens),
            rtol=0,
            atol=LOGIT_ATOL,
        )


def test_tokenizer_and_pipeline(exported):
    _, folder = exported
    tokenizer = AutoTokenizer.from_pretrained(folder)  # the card's call: no remote code needed
    assert (tokenizer.mask_token_id, tokenizer.eos_token_id) == (3, 2)
    pipe = pipeline("text-generation", model=str(folder), trust_remote_code=True)
    out = pipe("the river", max_new_tokens=4, do_sample=False)
    assert out[0]["generated_text"].startswith("the river")


def test_single_tower_folder_is_refused(exported, tmp_path):
    model, _ = exported
    folder = save_hf_folder(model.cfg, _state(model.context_tower.backbone), tmp_path / "plain")
    with pytest.raises(
        ConversionError, match=r"architectures=\['NemotronHForCausalLM'\].*import-hf"
    ):
        load_twotower_folder(folder)


def _edit_shard(folder: Path, edit) -> None:
    shard = folder / "model-00001-of-00001.safetensors"
    tensors = load_file(shard)
    edit(tensors)
    save_file(tensors, shard)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"] = dict.fromkeys(tensors, shard.name)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def test_missing_and_unexpected_tensors_are_named(exported, tmp_path):
    model, _ = exported
    folder = export(model, tmp_path / "hf")
    _edit_shard(folder, lambda t: t.pop("denoiser_tower.layers.1.mixer.k_proj.weight"))
    with pytest.raises(
        ConversionError, match=r"'denoiser_tower.layers.1.mixer.k_proj.weight' is missing"
    ):
        load_twotower_folder(folder)
    folder = export(model, tmp_path / "hf", overwrite=True)
    _edit_shard(folder, lambda t: t.update({"adaln.extra": torch.ones(2)}))
    with pytest.raises(ConversionError, match=r"1 tensor\(s\) .* no counterpart.*adaln.extra"):
        load_twotower_folder(folder)


def test_released_adaln_names_and_old_formulation_refused(exported, tmp_path):
    model, folder = exported
    d, n = model.cfg.hidden_size, len(model.cfg.pattern)
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    shard = load_file(folder / "model-00001-of-00001.safetensors")
    time_names = {k for k in index if k.startswith(("t_", "scale_shift_tables."))}
    assert {k: tuple(shard[k].shape) for k in time_names} == {
        "t_embedder.mlp.0.weight": (d, 256),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "t_block.1.weight": (3 * d, d),
        "t_block.1.bias": (3 * d,),
    } | {f"scale_shift_tables.{i}": (3, d) for i in range(n)}
    old = export(model, tmp_path / "old")
    _edit_shard(old, lambda t: t.update({"adaln.mlp.0.weight": torch.ones(128, 128)}))
    with pytest.raises(ConversionError, match=r"pre-release adaLN-single .* retrain stage 2"):
        load_twotower_folder(old)
    old_state = {**_state(model), "denoiser.adaln.tables": torch.zeros(n, 3 * d)}
    with pytest.raises(ConversionError, match=r"pre-release adaLN-single .* retrain stage 2"):
        megatron_to_export_state(old_state, model.cfg)


def test_fresh_export_class_starts_at_the_identity_modulation(exported):
    """The export's class built from its config (no weights) has the released identity init:
    gate rows 1, shift / scale rows 0, last t_block Linear zero; the embedder is random."""
    _, folder = exported
    hf = load_export(folder)
    config = hf.config.__class__.from_dict(hf.config.to_dict())
    config.time_step_min = 1e-3  # the export's 0 (no dt clamp) is outside transformers' dt init
    fresh = type(hf)(config)
    for table in fresh.scale_shift_tables:
        assert torch.equal(table[:2], torch.zeros_like(table[:2]))
        assert torch.equal(table[2], torch.ones_like(table[2]))
    assert not fresh.t_block[1].weight.any() and not fresh.t_block[1].bias.any()
    assert fresh.t_embedder.mlp[0].weight.any() and fresh.t_embedder.mlp[2].weight.any()
