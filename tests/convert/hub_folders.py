"""Stand-ins for downloaded ``nemotron_h`` folders, built from a tiny random model (nothing is
fetched), in the two on-disk layouts import accepts.

* Hub layout — what NVIDIA's Nemotron-H repositories hold and what transformers 5's
  ``save_pretrained`` writes: ``backbone.*`` names, ``embeddings``, ``norm_f``, one tensor per
  routed expert (``experts.{j}.up_proj/down_proj``), ``gate.e_score_correction_bias``. The
  stand-in also carries what those repositories add: the legacy ``hybrid_override_pattern``
  key, a remote-code ``auto_map``, ``time_step_min = 0.001`` and a multi-token-prediction head
  (``num_nextn_predict_layers = 1`` plus ``mtp.*`` tensors).
* module layout — transformers' in-memory names (``model.*``, experts stacked into 3-D tensors),
  as ``save_pretrained(save_original_format=False)`` writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tests.convert.models import random_hf_model

MTP_TENSORS = ("mtp.layers.0.norm.weight", "mtp.layers.0.mixer.q_proj.weight")


def hub_folder(path: Path, cfg, seed: int = 0):
    """(the random HF model, ``path`` holding it in the Hub layout)."""
    hf = random_hf_model(cfg, seed)
    hf.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config["hybrid_override_pattern"] = cfg.pattern
    del config["layers_block_type"]
    config.update(
        auto_map={
            "AutoConfig": "configuration_nemotron_h.NemotronHConfig",
            "AutoModelForCausalLM": "modeling_nemotron_h.NemotronHForCausalLM",
        },
        time_step_min=0.001,
        num_nextn_predict_layers=1,
    )
    (path / "config.json").write_text(json.dumps(config, indent=2))
    shards = sorted(path.glob("*.safetensors"))
    tensors = load_file(shards[0])
    tensors.update(
        {name: torch.ones(cfg.hidden_size, cfg.hidden_size)[:1].clone() for name in MTP_TENSORS}
    )
    save_file(tensors, shards[0], metadata={"format": "pt"})
    index = path / "model.safetensors.index.json"
    if index.is_file():
        listing = json.loads(index.read_text())
        listing["weight_map"].update(dict.fromkeys(MTP_TENSORS, shards[0].name))
        index.write_text(json.dumps(listing))
    return hf, path


def module_layout_folder(path: Path, cfg, seed: int = 0):
    """(the random HF model, ``path`` holding it in transformers' module layout)."""
    hf = random_hf_model(cfg, seed)
    hf.save_pretrained(path, save_original_format=False)
    return hf, path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to check that nothing changed)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }
