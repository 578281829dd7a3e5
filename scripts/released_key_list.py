"""The key/shape list of a two-tower export, built on the meta device, against the released list.

    .venv/bin/python scripts/released_key_list.py [--preset nano_30b_a3b] [--list]

Three lists of (tensor name, shape), for a model of ``--preset`` (default: the Nano):

* ``released``: NVIDIA's released layout written down from its description
  (docs/released_model.md): transformers' own ``NemotronHForCausalLM`` built on the meta device
  and named per expert, once as ``context_tower.*`` / ``context_lm_head.weight`` and once as
  ``denoiser_tower.*`` / ``lm_head.weight``, plus ``t_embedder.mlp.0`` (D×256, D),
  ``t_embedder.mlp.2`` (D×D, D), ``t_block.1`` (3D×D, 3D) and one (3, D) table per layer;
* ``export class``: the export folder's own modeling class (``NemotronHTwoTowerForCausalLM``,
  from a folder ``twotower-convert`` writes: config + code, no weights) on the meta device;
* ``converter``: the names ``export-hf`` writes (``two_tower.export_names``), with the export
  class's shapes.

It prints whether the three agree and the parameter count of each group; ``--list`` prints the
whole list too. Exits 1 when they differ.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def per_expert(state: dict) -> dict[str, tuple[int, ...]]:
    """In-memory names → on-disk names (stacked experts split) with their shapes."""
    from twotower_train.convert.hf_names import checkpoint_layout

    out = {}
    for name, tensor in state.items():
        tower, rest = name.split(".", 1) if "." in name else ("", name)
        if rest.endswith((".mixer.experts.up_proj", ".mixer.experts.down_proj")):
            for split, value in checkpoint_layout({"backbone." + rest: tensor}).items():
                out[f"{tower}.{split.removeprefix('backbone.')}"] = tuple(value.shape)
        else:
            out[name] = tuple(tensor.shape)
    return out


def released_list(config) -> dict[str, tuple[int, ...]]:
    import torch
    from transformers import NemotronHForCausalLM

    with torch.device("meta"):
        stock = NemotronHForCausalLM(config)
    tower = per_expert({f"x.{k}": v for k, v in stock.state_dict().items()})
    out = {}
    for name, shape in tower.items():
        name = name.removeprefix("x.")
        if name.startswith("model."):
            rest = name.removeprefix("model.")
            out["context_tower." + rest] = out["denoiser_tower." + rest] = shape
        elif name == "lm_head.weight":
            out["context_lm_head.weight"] = out["lm_head.weight"] = shape
        else:
            raise ValueError(f"unexpected tensor {name!r}")
    d = config.hidden_size
    out.update(
        {
            "t_embedder.mlp.0.weight": (d, 256),
            "t_embedder.mlp.0.bias": (d,),
            "t_embedder.mlp.2.weight": (d, d),
            "t_embedder.mlp.2.bias": (d,),
            "t_block.1.weight": (3 * d, d),
            "t_block.1.bias": (3 * d,),
        }
    )
    out.update({f"scale_shift_tables.{i}": (3, d) for i in range(config.num_hidden_layers)})
    return out


def export_class_list(cfg) -> dict[str, tuple[int, ...]]:
    """The export's modeling class, loaded from a weightless export folder, on meta."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from twotower_train.convert.two_tower import code_files, twotower_config

    folder = Path(tempfile.mkdtemp(prefix="released_key_list_"))
    try:
        config = twotower_config(cfg, block_size=16, dtype=torch.bfloat16)
        config.save_pretrained(folder)
        for file in code_files():
            shutil.copyfile(file, folder / file.name)
        with torch.device("meta"):
            loaded = AutoConfig.from_pretrained(folder, trust_remote_code=True)
            model = AutoModelForCausalLM.from_config(loaded, trust_remote_code=True)
        return per_expert(model.state_dict())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


GROUPS = (
    "context_tower.",
    "context_lm_head.",
    "denoiser_tower.",
    "lm_head.",
    "t_embedder.",
    "t_block.",
    "scale_shift_tables.",
)


def group_counts(shapes: dict[str, tuple[int, ...]]) -> Counter:
    counts: Counter = Counter()
    for name, shape in shapes.items():
        group = next(g for g in GROUPS if name.startswith(g))
        n = 1
        for size in shape:
            n *= size
        counts[group.rstrip(".")] += n
    return counts


def split_counts(shapes: dict[str, tuple[int, ...]], tower: str) -> dict[str, int]:
    """One tower's parameters (its head included) by how Megatron shards them: routed experts
    (over EP), replicated (norms, 1-D Mamba vectors, the router), the rest (over TP)."""
    out = {"experts": 0, "replicated": 0, "tensor_parallel": 0}
    head = "context_lm_head." if tower == "context_tower." else "lm_head."
    for name, shape in shapes.items():
        if not name.startswith((tower, head)):
            continue
        n = 1
        for size in shape:
            n *= size
        if ".mixer.experts." in name:
            out["experts"] += n
        elif len(shape) == 1 or ".mixer.gate." in name:
            out["replicated"] += n
        else:
            out["tensor_parallel"] += n
    return out


def memory_per_gpu(shapes: dict, tp: int, ep: int, gpus: int) -> dict[str, float]:
    """GiB per GPU of the weights and optimizer state of a stage-2 fine-tune in bf16 with the
    distributed optimizer over ``gpus`` GPUs at ``tp`` / ``ep`` (expert TP 1): the frozen context
    tower's bf16 weights only; the denoiser's bf16 weights + fp32 gradients + fp32 master weights
    and Adam moments (12 B, sharded over the data-parallel ranks: ``gpus / tp`` for dense
    parameters, ``gpus / ep`` for experts). Activations are not included (docs/memory.md)."""

    def share(counts):
        return counts["experts"] / ep, counts["tensor_parallel"] / tp + counts["replicated"]

    gib = 2**30
    ctx_e, ctx_d = share(split_counts(shapes, "context_tower."))
    den_e, den_d = share(split_counts(shapes, "denoiser_tower."))
    adaln = sum(n for g, n in group_counts(shapes).items() if g.startswith(("t_", "scale_shift")))
    den_d += adaln
    return {
        "context weights (bf16)": 2 * (ctx_e + ctx_d) / gib,
        "denoiser weights (bf16)": 2 * (den_e + den_d) / gib,
        "denoiser grads (fp32)": 4 * (den_e + den_d) / gib,
        "optimizer (fp32 master+m+v, sharded)": 12
        * (den_e / (gpus // ep) + den_d / (gpus // tp))
        / gib,
    }


def compare(preset_name: str) -> tuple[bool, dict, Counter]:
    """(whether the three lists agree, the released list, its parameter count per group)."""
    from twotower_train.convert.nemotron_h import hf_config_from_backbone
    from twotower_train.convert.two_tower import export_names
    from twotower_train.model.config import preset

    cfg = preset(preset_name)
    released = released_list(hf_config_from_backbone(cfg, time_step_min=1e-3))
    ours = export_class_list(cfg)
    names = export_names(cfg)
    agree = ours == released and names == set(released)
    if not agree:
        for label, other in (("export class", set(ours)), ("converter", names)):
            for name in sorted(other ^ set(released))[:10]:
                side = "only in " + (label if name in other else "the released list")
                print(f"  {name}: {side}")
        for name in sorted(set(ours) & set(released)):
            if ours[name] != released[name]:
                print(f"  {name}: export class {ours[name]} vs released {released[name]}")
    return agree, released, group_counts(released)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nano_30b_a3b")
    parser.add_argument("--list", action="store_true", help="print every name and shape")
    parser.add_argument(
        "--layout",
        type=int,
        nargs=3,
        default=(2, 8, 8),
        metavar=("TP", "EP", "GPUS"),
        help="memory per GPU at this layout (default: the nano recipe's, TP 2, EP 8, 8 GPUs)",
    )
    args = parser.parse_args(argv)
    agree, released, counts = compare(args.preset)
    if args.list:
        for name in sorted(released):
            print(f"{name}\t{list(released[name])}")
    print(
        f"{args.preset}: {len(released)} tensors; export class, converter and released list "
        f"{'agree' if agree else 'DIFFER'} (names and shapes)"
    )
    for group in (g.rstrip(".") for g in GROUPS):
        print(f"  {group:<20} {counts[group]:>16,d}")
    print(f"  {'total':<20} {sum(counts.values()):>16,d}")
    tp, ep, gpus = args.layout
    memory = memory_per_gpu(released, tp, ep, gpus)
    print(f"per GPU at TP={tp} EP={ep} over {gpus} GPUs (weights and optimizer state, GiB):")
    for label, value in memory.items():
        print(f"  {label:<40} {value:8.2f}")
    print(f"  {'total':<40} {sum(memory.values()):8.2f}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
