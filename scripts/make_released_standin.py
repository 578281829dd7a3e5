"""A tiny stand-in for NVIDIA's released Nemotron-TwoTower folder, to rehearse the fine-tune path.

    .venv/bin/python scripts/make_released_standin.py OUT [--preset small] [--seed 0]
        [--max-shard-size 2MB]

It holds what the released folder holds, in its layout and formats, at a small size: two
randomly initialised transformers ``NemotronHForCausalLM`` models (the context tower and the
denoiser tower) under the released names (``context_tower.*`` / ``context_lm_head.weight``,
``denoiser_tower.*`` / ``lm_head.weight`` — the denoiser's head —, one tensor per expert),
random time conditioning (``t_embedder.mlp.{0,2}.*``, ``t_block.1.*``, ``scale_shift_tables.{i}``),
bf16 tensors except the ones a bf16 Megatron model keeps in fp32 (Mamba ``A_log`` and ``D``, the
router's expert-score bias), sharded safetensors + ``model.safetensors.index.json``, and a
config.json as NVIDIA writes it (``architectures: ["NemotronHTwoTowerForCausalLM"]``,
``model_type: "nemotron_h"``, the legacy ``hybrid_override_pattern`` key, their ``auto_map``,
``time_step_min = 0.001``, no ``mask_token_id`` and no ``block_size``). Nothing here uses the
repository's converter: the names are built from transformers' own ``save_pretrained`` output.

The real folder (Nemotron-TwoTower-30B-A3B-Base-BF16) is the same at ``--preset nano_30b_a3b``
scale: ~63.2 B parameters, ~118 GiB (docs/released_model.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FP32 = (".A_log", ".D", ".e_score_correction_bias")
"""Tensors a bf16 Megatron model holds in fp32 (and so the released checkpoint stores in fp32)."""
RELEASED_AUTO_MAP = {
    "AutoConfig": "configuration_nemotron_h.NemotronHConfig",
    "AutoModelForCausalLM": "modeling_nemotron_twotower.NemotronHTwoTowerForCausalLM",
}


def _tower(config, seed: int) -> dict[str, torch.Tensor]:
    """A random NemotronH's tensors as transformers writes them (``backbone.*``, per expert)."""
    from safetensors.torch import load_file
    from transformers import NemotronHForCausalLM

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        NemotronHForCausalLM(config).save_pretrained(tmp)
        tensors = {}
        for shard in sorted(Path(tmp).glob("*.safetensors")):
            tensors.update(load_file(shard))
    return tensors


def released_tensors(config, seed: int = 0) -> dict[str, torch.Tensor]:
    """The stand-in's tensors under the released names, in the released dtypes."""
    out = {}
    for tower, head, tower_seed in (
        ("context_tower.", "context_lm_head.", seed),
        ("denoiser_tower.", "lm_head.", seed + 1),
    ):
        for name, tensor in _tower(config, tower_seed).items():
            if name.startswith("backbone."):
                out[tower + name.removeprefix("backbone.")] = tensor
            elif name.startswith("lm_head."):
                out[head + name.removeprefix("lm_head.")] = tensor
            else:
                raise ValueError(f"unexpected tensor {name!r} in transformers' NemotronH")
    d, g = config.hidden_size, torch.Generator().manual_seed(seed + 2)

    def rand(*shape):
        return 0.02 * torch.randn(shape, generator=g)

    out.update(
        {
            "t_embedder.mlp.0.weight": rand(d, 256),
            "t_embedder.mlp.0.bias": rand(d),
            "t_embedder.mlp.2.weight": rand(d, d),
            "t_embedder.mlp.2.bias": rand(d),
            "t_block.1.weight": rand(3 * d, d),
            "t_block.1.bias": rand(3 * d),
        }
    )
    for i in range(config.num_hidden_layers):
        table = rand(3, d)
        table[2] += 1.0  # gate rows near 1, as a trained model's
        out[f"scale_shift_tables.{i}"] = table
    return {
        k: v.to(torch.float32 if k.endswith(FP32) else torch.bfloat16).contiguous()
        for k, v in out.items()
    }


def released_config(config) -> dict:
    """config.json as NVIDIA's released folder writes it (see the module docstring)."""
    values = json.loads(config.to_json_string())  # the fields save_pretrained writes
    pattern = config.hybrid_override_pattern
    for key in ("layers_block_type", "mask_token_id", "block_size", "denoiser_shift", "auto_map"):
        values.pop(key, None)
    values.update(
        architectures=["NemotronHTwoTowerForCausalLM"],
        model_type="nemotron_h",
        hybrid_override_pattern=pattern,
        auto_map=RELEASED_AUTO_MAP,
        time_step_min=0.001,
        torch_dtype="bfloat16",
    )
    values.pop("dtype", None)
    values.pop("transformers_version", None)
    return values


def write_folder(out: Path, config, *, seed: int = 0, max_shard_bytes: int = 2 * 2**20) -> Path:
    """Write the stand-in folder ``out`` (config.json, shards, index)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=False)
    tensors = released_tensors(config, seed)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    weight_map = {}
    for k, shard in enumerate(shards, 1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, out / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(released_config(config), indent=2))
    return out


def hf_config(preset_name: str):
    """transformers' NemotronHConfig of a preset of this repository (time_step_min as released)."""
    from twotower_train.convert.nemotron_h import hf_config_from_backbone
    from twotower_train.model.config import preset

    return hf_config_from_backbone(preset(preset_name), time_step_min=1e-3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to create (must not exist)")
    parser.add_argument("--preset", default="small", help="model preset (default: small)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shard-size", type=float, default=2.0, help="MiB per shard")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} already exists; choose another folder or remove it")
    folder = write_folder(
        args.out,
        hf_config(args.preset),
        seed=args.seed,
        max_shard_bytes=int(args.max_shard_size * 2**20),
    )
    shards = len(list(folder.glob("model-*.safetensors")))
    print(f"make_released_standin: wrote {folder} ({shards} shards)")


if __name__ == "__main__":
    main()
