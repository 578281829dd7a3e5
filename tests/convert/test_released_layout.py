"""The released Nemotron-TwoTower checkpoint layout (convert/released_layout.py): the exact key
list, a bit-exact round trip, and a stand-in of the released class structure (stock
``NemotronHModel`` towers under the released attribute names, written here) loading it through
transformers with no missing or unexpected keys and saving it back per expert."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from transformers.models.nemotron_h.configuration_nemotron_h import NemotronHConfig

from tests.convert.two_tower_models import random_two_tower
from twotower_train import distributed
from twotower_train.convert.hf_files import ConversionError
from twotower_train.convert.nemotron_h import hf_config_values
from twotower_train.convert.released_layout import (
    megatron_to_released_state,
    released_to_megatron_state,
)

STAND_IN = """
import torch
from torch import nn
from transformers.models.nemotron_h.modeling_nemotron_h import (
    NemotronHModel,
    NemotronHPreTrainedModel,
)


class ReleasedStandIn(NemotronHPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        d = config.hidden_size
        self.context_tower = NemotronHModel(config)
        self.context_lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.denoiser_tower = NemotronHModel(config)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(d, 3 * d))
        self.scale_shift_tables = nn.ParameterList(
            [nn.Parameter(torch.zeros(3, d)) for _ in range(config.num_hidden_layers)]
        )
        self.post_init()
"""


@pytest.fixture(scope="module")
def model():
    distributed.initialize(seed=0)
    return random_two_tower(seed=4)


def _state(model):
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


def test_key_list_and_round_trip(model):
    cfg = model.cfg
    d, n, experts = cfg.hidden_size, len(cfg.pattern), cfg.num_experts
    released = megatron_to_released_state(_state(model), cfg)
    towers = {"context_tower.", "denoiser_tower."}
    assert {k.split(".")[0] + "." for k in released if k.split(".")[0] + "." in towers} == towers
    assert not [k for k in released if ".experts.up_proj" in k]  # one tensor per expert
    moe = cfg.pattern.index("E")
    for tower in towers:
        assert f"{tower}embeddings.weight" in released and f"{tower}norm_f.weight" in released
        for e in range(experts):
            assert f"{tower}layers.{moe}.mixer.experts.{e}.up_proj.weight" in released
    others = {k for k in released if not k.startswith(tuple(towers))}
    assert others == {
        "context_lm_head.weight",
        "lm_head.weight",
        "t_embedder.mlp.0.weight",
        "t_embedder.mlp.0.bias",
        "t_embedder.mlp.2.weight",
        "t_embedder.mlp.2.bias",
        "t_block.1.weight",
        "t_block.1.bias",
        *(f"scale_shift_tables.{i}" for i in range(n)),
    }
    assert released["t_block.1.weight"].shape == (3 * d, d)
    # The denoiser's head is lm_head, the context's context_lm_head (they differ: perturbed).
    state = _state(model)
    assert torch.equal(released["lm_head.weight"], state["denoiser.backbone.output_layer.weight"])
    assert torch.equal(
        released["context_lm_head.weight"], state["context_tower.backbone.output_layer.weight"]
    )
    back = released_to_megatron_state(released, cfg)
    assert back.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(back[key], tensor), key


def test_released_errors_name_the_tensor(model):
    released = megatron_to_released_state(_state(model), model.cfg)
    with pytest.raises(ConversionError, match=r"'scale_shift_tables.0' is missing"):
        released_to_megatron_state(
            {k: v for k, v in released.items() if k != "scale_shift_tables.0"}, model.cfg
        )
    with pytest.raises(ConversionError, match=r"'extra.weight' belongs to neither tower"):
        released_to_megatron_state({**released, "extra.weight": torch.ones(1)}, model.cfg)


def test_stand_in_of_the_released_class_loads_it(model, tmp_path):
    """No missing or unexpected keys, every value equal, and save_pretrained writes the same
    names back (transformers merges and splits each tower's experts itself)."""
    released = megatron_to_released_state(_state(model), model.cfg)
    folder = tmp_path / "released"
    values = hf_config_values(model.cfg, dtype="float32", architectures=["ReleasedStandIn"])
    NemotronHConfig(
        **values, auto_map={"AutoModelForCausalLM": "modeling_stand_in.ReleasedStandIn"}
    ).save_pretrained(folder)
    (folder / "modeling_stand_in.py").write_text(STAND_IN)
    save_file(
        {k: v.contiguous() for k, v in released.items()},
        folder / "model.safetensors",
        metadata={"format": "pt"},
    )
    assert json.loads((folder / "config.json").read_text())["model_type"] == "nemotron_h"
    loaded, info = AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=True, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    in_memory = loaded.state_dict()
    for key, tensor in in_memory.items():
        if key.endswith(("experts.up_proj", "experts.down_proj")):  # stacked in memory
            tower, rest = key.split(".", 1)
            stem, proj = rest.rsplit(".", 1)
            per_expert = [
                released[f"{tower}.{stem}.{e}.{proj}.weight"] for e in range(tensor.shape[0])
            ]
            assert torch.equal(tensor, torch.stack(per_expert)), key
        else:
            assert torch.equal(tensor, released[key]), key
    loaded.save_pretrained(tmp_path / "resaved")
    assert set(load_file(tmp_path / "resaved" / "model.safetensors")) == set(released)


def test_nano_export_key_list_is_the_released_one():
    """scripts/released_key_list.py on the meta device: the export class's tensors, the names
    export-hf writes and the released list agree for the Nano; one tower with its head is the
    Nano's 31.578 B parameters (the notes), adaLN-single 30.0 M."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "released_key_list.py"
    spec = importlib.util.spec_from_file_location("released_key_list", script)
    key_list = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(key_list)
    agree, released, counts = key_list.compare("nano_30b_a3b")
    assert agree
    assert len(released) == 12_544
    assert counts["context_tower"] + counts["context_lm_head"] == 31_577_940_288
    assert counts["denoiser_tower"] + counts["lm_head"] == 31_577_940_288
    d = 2688
    assert counts["t_embedder"] == 256 * d + d + d * d + d
    assert counts["t_block"] == 3 * d * d + 3 * d
    assert counts["scale_shift_tables"] == 52 * 3 * d
