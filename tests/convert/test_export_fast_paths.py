"""The export's decoding fast paths against transformers' modules and the chunked scan (fp32,
CPU, seeded): the loop-free MoE forward (``moe_nemotron_twotower.py``), and in
``mixers_nemotron_twotower.mamba_mixer`` the single-token Mamba step (s = 1) and the one-chunk
quadratic form (s ≤ chunk_size)."""

from __future__ import annotations

import copy
import importlib
import shutil

import pytest
import torch
from transformers.initialization import no_init_weights
from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHMoE

from tests.convert.models import _fill, parity_config, random_hf_model
from twotower_train.convert.hf_export import moe_nemotron_twotower as moe_code
from twotower_train.convert.nemotron_h import hf_config_from_backbone
from twotower_train.convert.two_tower import code_files

ATOL = 1e-5


def random_moe(experts: int, top_k: int, groups: int = 1, topk_group: int = 1, seed: int = 0):
    """A stock ``NemotronHMoE`` with seeded weights and a non-zero expert-bias correction."""
    config = copy.deepcopy(hf_config_from_backbone(parity_config()))
    config.n_routed_experts, config.num_experts_per_tok = experts, top_k
    config.n_group, config.topk_group = groups, topk_group
    with no_init_weights():
        moe = NemotronHMoE(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in moe.state_dict().items():
            t.copy_(_fill(name, t, g))
    return moe.eval()


ROUTERS = {
    "4 experts top-2": dict(experts=4, top_k=2),
    "8 experts top-2, 2 groups choose 1": dict(experts=8, top_k=2, groups=2, topk_group=1),
    "8 experts top-3, 4 groups choose 2": dict(experts=8, top_k=3, groups=4, topk_group=2),
}


@pytest.mark.parametrize("grouped_mm", [True, False], ids=["grouped_mm", "gathered"])
@pytest.mark.parametrize("router", list(ROUTERS))
@pytest.mark.parametrize("batch,tokens", [(1, 1), (1, 16), (3, 1), (3, 16)])
@torch.no_grad()
def test_moe_forward_equals_the_stock_module(router, batch, tokens, grouped_mm, monkeypatch):
    if grouped_mm and not moe_code.grouped_mm_supported(torch.empty(4, 4)):
        pytest.skip("this torch has no CPU grouped_mm")
    if not grouped_mm:
        monkeypatch.setattr(moe_code, "grouped_mm_supported", lambda weight: False)
    moe = random_moe(**ROUTERS[router])
    hidden = torch.randn(
        batch, tokens, moe.config.hidden_size, generator=torch.Generator().manual_seed(1)
    )
    expected = moe(hidden)  # transformers' eager per-expert loop
    got = moe_code.moe_forward(moe, hidden)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    # The experts' share is most of the output: a wrong expert or weight would show.
    assert (expected - moe.shared_experts(hidden)).abs().max() > 100 * ATOL


@torch.no_grad()
def test_moe_forward_runs_the_router_module_and_its_hooks():
    # forward_cost.experts_touched (the generation benchmark) and transformers' router-logit
    # capture observe the router through forward hooks.
    moe = random_moe(experts=4, top_k=2)
    seen = []
    moe.gate.register_forward_hook(lambda module, inputs, output: seen.append(output[2]))
    moe_code.moe_forward(moe, torch.randn(1, 5, moe.config.hidden_size))
    assert len(seen) == 1 and seen[0].shape == (5, 2)


@torch.no_grad()
def test_moe_forward_has_no_graph_break(monkeypatch):
    monkeypatch.setenv("TORCHDYNAMO_DISABLE", "0")  # the suite disables dynamo (tests/conftest.py)
    moe = random_moe(experts=4, top_k=2)
    hidden = torch.randn(1, 16, moe.config.hidden_size)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(moe_code.moe_forward)(moe, hidden)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


# ---- the single-token Mamba step --------------------------------------------------------------


@pytest.fixture(scope="module")
def mixers(tmp_path_factory):
    """The export folder's ``mixers_nemotron_twotower`` (it imports its sibling ``cache.py``)."""
    root = tmp_path_factory.mktemp("export_code")
    package = root / "fastpaths_export"
    package.mkdir()
    for file in code_files():
        shutil.copy(file, package / file.name)
    (package / "__init__.py").write_text("")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(root))
        yield importlib.import_module("fastpaths_export.mixers_nemotron_twotower")


@pytest.fixture(scope="module")
def mamba():
    model = random_hf_model(parity_config())
    return next(b.mixer for b in model.model.layers if b.block_type == "linear_attention")


def chunked(mixers, mamba, *args, **kw):
    """``mamba_mixer`` through transformers' ``mamba2_chunk_scan`` over chunks of 4 positions
    (s > chunk_size: neither fast path) — the reference for the fast paths."""
    saved, mamba.chunk_size = mamba.chunk_size, 4
    try:
        return mixers.mamba_mixer(mamba, *args, **kw)
    finally:
        mamba.chunk_size = saved


def assert_states_close(got, expected):
    torch.testing.assert_close(got.conv, expected.conv, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.ssm, expected.ssm, atol=ATOL, rtol=0)
    assert got.ssm.dtype == torch.float32


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("seeded", [False, True])
@torch.no_grad()
def test_one_chunk_mamba_equals_the_chunked_scan(mixers, mamba, seeded, padded):
    batch, prefill, s = 3, 5, 12  # 12 ≤ chunk_size 16: one chunk
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(batch, prefill + s, mamba.hidden_size, generator=g)
    initial = mixers.mamba_mixer(mamba, hidden[:, :prefill], None)[1] if seeded else None
    valid = None
    if padded:  # left padding: rows 1 and 2 start late
        valid = torch.ones(batch, s, dtype=torch.bool)
        valid[1, :3], valid[2, :7] = False, False
    new = hidden[:, prefill:]
    out, final, each = mixers.mamba_mixer(mamba, new, initial, valid, position_states=True)
    ref_out, ref_final, ref_each = chunked(mixers, mamba, new, initial, valid, position_states=True)
    torch.testing.assert_close(out, ref_out, atol=ATOL, rtol=0)
    assert_states_close(final, ref_final)
    assert_states_close(each, ref_each)
    assert_states_close(mixers.mamba_mixer(mamba, new, initial, valid)[1], ref_final)
    if not seeded and not padded:  # and transformers' own mixer forward from zero states
        torch.testing.assert_close(out, mamba(new), atol=ATOL, rtol=0)


@pytest.mark.parametrize("prefill", [0, 5])
@torch.no_grad()
def test_single_token_mamba_steps_equal_the_chunked_scan(mixers, mamba, prefill):
    batch, steps = 3, 4
    hidden = torch.randn(
        batch, prefill + steps, mamba.hidden_size, generator=torch.Generator().manual_seed(2)
    )
    expected, final, each = chunked(mixers, mamba, hidden, None, position_states=True)
    torch.testing.assert_close(expected, mamba(hidden), atol=ATOL, rtol=0)  # transformers' forward
    states = None
    if prefill:
        _, states, _ = chunked(mixers, mamba, hidden[:, :prefill], None)
    for k in range(prefill, prefill + steps):
        out, states, per_position = mixers.mamba_mixer(mamba, hidden[:, k : k + 1], states)
        assert per_position is None
        torch.testing.assert_close(out, expected[:, k : k + 1], atol=ATOL, rtol=0)
        assert_states_close(states, type(states)(conv=each.conv[:, k], ssm=each.ssm[:, k]))
    assert_states_close(states, final)
    # From a rolled-back state (speculative decoding keeps the per-position states: views).
    k = prefill + 1
    rolled_back = type(states)(conv=each.conv[:, k - 1], ssm=each.ssm[:, k - 1])
    out, _, _ = mixers.mamba_mixer(mamba, hidden[:, k : k + 1], rolled_back)
    torch.testing.assert_close(out, expected[:, k : k + 1], atol=ATOL, rtol=0)


@torch.no_grad()
def test_single_token_mamba_step_leaves_its_input_states_alone(mixers, mamba):
    hidden = torch.randn(2, 6, mamba.hidden_size, generator=torch.Generator().manual_seed(3))
    _, states, _ = mixers.mamba_mixer(mamba, hidden[:, :5], None)
    conv, ssm = states.conv.clone(), states.ssm.clone()
    first, _, _ = mixers.mamba_mixer(mamba, hidden[:, 5:], states)
    again, _, _ = mixers.mamba_mixer(mamba, hidden[:, 5:], states)  # the denoiser reuses them
    assert torch.equal(states.conv, conv) and torch.equal(states.ssm, ssm)
    assert torch.equal(first, again)
