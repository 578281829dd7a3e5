"""A context-tower-only load (``load_for_decoding(..., context_only=True)``, ``twotower-generate
--context-only``) reads the context tower's tensors and nothing of the denoiser — from an export
folder's shards and from trainer checkpoints — and decodes AR exactly like the whole model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.convert.conftest import tokenizer_dir  # noqa: F401  (fixture)
from tests.convert.two_tower_models import export, random_two_tower
from tests.inference.placement import EXPORT_TOWERS, tensor_devices
from twotower_train.inference import context_only, modes
from twotower_train.inference.load import load_for_decoding

PROMPTS = [[5, 17, 99, 240, 31, 7], [12, 40, 9]]
AR = modes.build_config("ar", max_new_tokens=6)
TOWERS = {"context_tower.": "context", "denoiser.": "denoiser"}


def _ar(model) -> list[list[int]]:
    return modes.generate(model, PROMPTS, "ar", AR).tokens


@pytest.fixture(scope="module")
def export_folder(tmp_path_factory, tokenizer_dir):  # noqa: F811
    """A random two-tower export in small shards: some hold only denoiser tensors."""
    from transformers import AutoTokenizer

    from twotower_train import distributed

    distributed.initialize(seed=0)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    folder = tmp_path_factory.mktemp("export") / "hf"
    return export(random_two_tower(), folder, tokenizer, max_shard_bytes=200_000)


class ReadLog:
    """``safe_open`` that records every shard opened and every tensor read."""

    def __init__(self, monkeypatch):
        self.files, self.tensors = [], []
        real = context_only.safe_open
        log = self

        class Logged:
            def __init__(self, file, **kw):
                log.files.append(file.name)
                self._f = real(file, **kw)

            def __enter__(self):
                self._inner = self._f.__enter__()
                return self

            def __exit__(self, *exc):
                return self._f.__exit__(*exc)

            def keys(self):
                return self._inner.keys()

            def get_tensor(self, name):
                log.tensors.append(name)
                return self._inner.get_tensor(name)

        monkeypatch.setattr(context_only, "safe_open", Logged)


def test_export_context_only_reads_the_context_tower_alone(export_folder, monkeypatch):
    import json

    from transformers import AutoModelForCausalLM

    weight_map = json.loads((export_folder / "model.safetensors.index.json").read_text())
    weight_map = weight_map["weight_map"]
    context = {n for n in weight_map if n.startswith(("context_tower.", "context_lm_head."))}
    log = ReadLog(monkeypatch)
    loaded = load_for_decoding(export_folder, context_only=True, device="cpu")
    assert sorted(log.tensors) == sorted(context)  # each context tensor once, nothing else
    assert set(log.files) == {weight_map[n] for n in context}
    assert set(weight_map.values()) - set(log.files), "some shard holds only denoiser tensors"
    model = loaded.model
    assert tensor_devices(model, EXPORT_TOWERS) == {
        "context": {torch.device("cpu")},
        "denoiser": {torch.device("meta")},
    }
    full = AutoModelForCausalLM.from_pretrained(export_folder, trust_remote_code=True).eval()
    reference = full.state_dict()
    for name, tensor in model.state_dict().items():
        if name.startswith(("context_tower.", "context_lm_head.")):
            assert tensor.dtype == reference[name].dtype, name
            assert torch.equal(tensor, reference[name]), name
    assert _ar(model) == _ar(full)
    with pytest.raises(modes.SamplerError, match="loaded context-only"):
        modes.generate(model, PROMPTS, "mask_diffusion", modes.build_config("mask_diffusion"))


def test_export_context_only_keeps_a_bf16_folder_as_stored(tmp_path, single_process):
    from transformers import AutoModelForCausalLM

    model = random_two_tower().to(torch.bfloat16)
    for name, p in model.named_parameters():
        if name.endswith(("A_log", ".D")):  # what Megatron keeps fp32 in a bf16 model
            p.data = p.data.float()
    folder = export(model, tmp_path / "hf")
    full = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    loaded = context_only.load_export_context_only(folder)
    reference = full.state_dict()
    dtypes = set()
    for name, tensor in loaded.state_dict().items():
        if name.startswith(("context_tower.", "context_lm_head.")):
            assert (tensor.dtype, torch.equal(tensor, reference[name])) == (
                reference[name].dtype,
                True,
            ), name
            dtypes.add(tensor.dtype)
    assert dtypes == {torch.bfloat16, torch.float32}
    assert _ar(loaded) == _ar(full)


class LoadLog:
    """The keys every trainer-checkpoint read of a context-only load asks for."""

    def __init__(self, monkeypatch):
        self.keys: list[str] = []
        self.paths: list[Path] = []
        real = context_only.checkpoint.load_model_state

        def logged(path, request):
            self.keys += list(request)
            self.paths.append(Path(path).resolve())
            return real(path, request)

        monkeypatch.setattr(context_only.checkpoint, "load_model_state", logged)


def test_checkpoint_context_only_reads_the_context_tower_alone(
    stage2_checkpoint, single_process, monkeypatch
):
    """A self-contained checkpoint (both towers stored): only ``context_tower.*`` is asked for."""
    full = load_for_decoding(stage2_checkpoint, device="cpu").model
    log = LoadLog(monkeypatch)
    model = load_for_decoding(stage2_checkpoint, context_only=True, device="cpu").model
    assert log.keys and all(k.startswith("context_tower.") for k in log.keys)
    tensors = {k for k in full.state_dict() if not k.endswith("_extra_state")}
    assert {k for k in log.keys if not k.endswith("_extra_state")} == {
        k for k in tensors if k.startswith("context_tower.")
    }
    assert tensor_devices(model, TOWERS) == {
        "context": {torch.device("cpu")},
        "denoiser": {torch.device("meta")},
    }
    reference = full.state_dict()
    for name, tensor in model.state_dict().items():
        if name.startswith("context_tower.") and not name.endswith("_extra_state"):
            assert torch.equal(tensor, reference[name]), name
    assert _ar(model) == _ar(full)


def test_checkpoint_with_a_frozen_reference_reads_nothing_of_itself(
    two_tower_checkpoint, single_process, monkeypatch
):
    """A stage-2 checkpoint that keeps its frozen tower out holds the denoiser alone: the context
    tower comes from the verified backbone checkpoint, the stage-2 checkpoint is not read."""
    full = load_for_decoding(two_tower_checkpoint, device="cpu").model
    from twotower_train.training import checkpoint_layout

    log = LoadLog(monkeypatch)
    model = load_for_decoding(two_tower_checkpoint, context_only=True, device="cpu").model
    stage2 = checkpoint_layout.resolve_checkpoint_dir(two_tower_checkpoint).resolve()
    assert log.paths and stage2 not in log.paths  # the backbone checkpoint only
    assert not any(k.startswith("denoiser.") for k in log.keys)
    assert model.denoiser_device == torch.device("meta")
    assert _ar(model) == _ar(full)


def test_a_context_only_load_builds_the_denoiser_on_meta(
    stage2_checkpoint, single_process, monkeypatch
):
    """The denoiser of a context-only load is never allocated: its backbone is built under the
    ``meta`` device (a Nano-scale denoiser would otherwise take host memory and init time)."""
    from twotower_train.model import two_tower

    devices = []
    real = two_tower.build_backbone

    def build_backbone(*args, **kwargs):
        devices.append(torch.get_default_device().type)
        return real(*args, **kwargs)

    monkeypatch.setattr(two_tower, "build_backbone", build_backbone)
    model = load_for_decoding(stage2_checkpoint, context_only=True, device="cpu").model
    assert devices == ["cpu", "meta"]  # the context tower, then the denoiser
    assert {p.device.type for p in model.denoiser.parameters()} == {"meta"}
    full = load_for_decoding(stage2_checkpoint, device="cpu").model
    assert devices == ["cpu", "meta", "cpu", "cpu"]  # a whole load builds both for real
    assert _ar(model) == _ar(full)


def test_a_context_only_load_of_one_tower_says_so(two_tower_checkpoint, single_process):
    from twotower_train.errors import UserError

    backbone = Path(str(two_tower_checkpoint).replace("/stage2/", "/stage1/"))  # its stage 1
    assert backbone.is_dir()
    with pytest.raises(UserError, match="single-tower checkpoint"):
        load_for_decoding(backbone, context_only=True, device="cpu")
