"""``export-hf`` converts on the CPU shard by shard: the released tensors are made only when
their shard is written (``export_plan`` + ``write_shards``), the checkpoint is loaded on the
CPU, and what is written is exactly the eager conversion's tensors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.convert.two_tower_models import random_two_tower
from twotower_train.convert import hf_files
from twotower_train.convert.two_tower import export_plan, megatron_to_export_state


def _state(model):
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


def test_export_plan_is_the_eager_conversion_made_on_demand(single_process):
    model = random_two_tower()
    state = _state(model)
    eager = megatron_to_export_state(state, model.cfg)
    plan = export_plan(state, model.cfg)
    assert list(plan) == list(eager)  # same names, same order (same shard layout)
    for name, pending in plan.items():
        assert pending.like.device == torch.device("meta")
        made = pending.make()[pending.index]
        assert (made.shape, made.dtype) == (pending.like.shape, pending.like.dtype), name
        assert torch.equal(made, eager[name]), name


def test_shards_are_made_one_at_a_time_and_hold_the_eager_tensors(
    single_process, tmp_path, monkeypatch
):
    model = random_two_tower()
    state = _state(model)
    plan = export_plan(state, model.cfg)
    events = []  # ("make", producer) when a conversion runs, ("save", names) when a shard is saved
    producer = {name: id(p.make) for name, p in plan.items()}
    makers = {}
    for name, pending in plan.items():
        if id(pending.make) not in makers:
            real, key = pending.make, id(pending.make)

            def make(real=real, key=key):
                events.append(("make", key))
                return real()

            makers[id(pending.make)] = make
        plan[name] = hf_files.Pending(pending.like, makers[id(pending.make)], pending.index)
    real_save = hf_files.save_file

    def save(shard, file, **kw):
        events.append(("save", list(shard)))
        real_save(shard, file, **kw)

    monkeypatch.setattr(hf_files, "save_file", save)
    hf_files.write_shards(plan, tmp_path, max_shard_bytes=200_000)
    saves = [names for kind, names in events if kind == "save"]
    assert len(saves) > 3
    made_since = set()
    for kind, what in events:
        if kind == "make":
            made_since.add(what)
        else:  # this shard's conversions, made after the previous shard was saved, no others
            assert made_since == {producer[n] for n in what}
            made_since = set()
    written = {}
    for file in sorted(tmp_path.glob("model-*.safetensors")):
        written.update(load_file(file))
    eager = megatron_to_export_state(state, model.cfg)
    assert written.keys() == eager.keys()
    for name, tensor in eager.items():
        assert written[name].dtype == tensor.dtype and torch.equal(written[name], tensor), name


def test_export_loads_the_checkpoint_on_the_cpu(monkeypatch, tmp_path):
    """``export-hf`` asks for the model on the CPU (built there, never on a GPU)."""
    from twotower_train.convert import commands
    from twotower_train.inference import load

    asked = {}

    def stop(path, **kw):
        asked.update(kw)
        raise RuntimeError("stop here")

    monkeypatch.setattr(load, "load_trained_model", stop)
    monkeypatch.setattr(commands.distributed, "initialize", lambda **kw: None)
    with pytest.raises(RuntimeError, match="stop here"):
        commands.export_checkpoint(tmp_path / "ck", tmp_path / "hf")
    assert asked["device"] == "cpu"
