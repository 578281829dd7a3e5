"""Tests for twotower_train.training.curriculum (phase lookup, validation, per-phase WSD lr)."""

import math

import pytest
import torch

from twotower_train.training.curriculum import (
    Curriculum,
    LRScheduleConfig,
    PhaseConfig,
    WSDDecayStyle,
    build_phase_scheduler,
)

SEQ = 64
GBT = 4 * SEQ  # global batch of 4 sequences


def _phases():
    return [
        PhaseConfig("p1-s32", 32, [("data/a", 0.7), ("data/b", 0.3)], steps=10),
        PhaseConfig("p2-s32", 32, [("data/c", 1.0)], tokens=20 * GBT + 1),  # → 21 steps
        PhaseConfig("p2-s16", 16, [("data/c", 1.0)], tokens=5 * GBT),  # → 5 steps
    ]


def _optimizer():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))]
    return torch.optim.AdamW(
        [{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:], "weight_decay": 0.0}],
        lr=1.0,
    )


def test_steps_boundaries_and_token_conversion():
    cur = Curriculum(_phases(), GBT, SEQ)
    assert cur.phase_steps == (10, 21, 5)  # ceil(tokens / global_batch_tokens)
    assert cur.phase_starts == (0, 10, 31) and cur.boundaries == (10, 31)
    assert cur.total_steps == 36


@pytest.mark.parametrize(
    "step, index, in_phase, start, end",
    [
        (0, 0, 0, 0, 10),
        (9, 0, 9, 0, 10),
        (10, 1, 0, 10, 31),
        (30, 1, 20, 10, 31),
        (31, 2, 0, 31, 36),
        (35, 2, 4, 31, 36),
    ],
)
def test_phase_at_edges(step, index, in_phase, start, end):
    active = Curriculum(_phases(), GBT, SEQ).phase_at(step)
    assert (active.index, active.step_in_phase) == (index, in_phase)
    assert (active.phase_start_step, active.phase_end_step) == (start, end)
    assert active.phase.name == _phases()[index].name


def test_phase_at_outside_range():
    cur = Curriculum(_phases(), GBT, SEQ)
    for step in (-1, 36):
        with pytest.raises(ValueError, match="outside the curriculum"):
            cur.phase_at(step)


@pytest.mark.parametrize(
    "change, key",
    [
        (dict(block_size=24), r"phases\[1\].block_size=24 must divide seq_length=64"),
        (dict(steps=0, tokens=None), r"phases\[1\].steps=0"),
        (dict(steps=5), r"phases\[1\]: set exactly one of steps / tokens"),
        (dict(blend=[]), r"phases\[1\].blend must list"),
        (dict(blend=[("x", 0.0)]), r"phases\[1\].blend\[0\] weight=0.0"),
        (dict(blend=[("x", -1)]), r"phases\[1\].blend\[0\] weight=-1"),
        (dict(name="p1-s32"), r"phases\[1\].name='p1-s32' is used"),
        (dict(lr=LRScheduleConfig(warmup_steps=20)), r"phases\[1\].lr: warmup_steps \(20\)"),
        (dict(lr=LRScheduleConfig(decay_steps=3, decay_fraction=0.2)), r"phases\[1\].lr: set at"),
        (dict(lr=LRScheduleConfig(peak=1e-6, min=1e-4)), r"phases\[1\].lr: need 0 <= min"),
    ],
)
def test_validation_names_the_key(change, key):
    phases = _phases()
    phases[1] = PhaseConfig(**{**phases[1].__dict__, **change})
    with pytest.raises(ValueError, match=key):
        Curriculum(phases, GBT, SEQ)


def test_from_dict_and_unknown_keys():
    cfg = {
        "phases": [
            {
                "name": "a",
                "block_size": 32,
                "blend": [["data/a", 1]],
                "steps": 10,
                "lr": {"warmup_steps": 2, "decay_style": "cosine", "decay_steps": 3},
            },
            {
                "name": "b",
                "block_size": 16,
                "blend": [{"prefix": "data/b", "weight": 2.0}],
                "tokens": 2.0e3,
            },
        ]
    }
    cur = Curriculum.from_dict(cfg, global_batch_tokens=GBT, seq_length=SEQ)
    assert cur.phases[0].lr.decay_style is WSDDecayStyle.COSINE
    assert cur.phases[1].blend == [("data/b", 2.0)]
    assert cur.phase_steps == (10, math.ceil(2000 / GBT))
    bad = {"phases": [{**cfg["phases"][0], "blocksize": 8}]}
    with pytest.raises(ValueError, match=r"phases\[0\]: unknown key\(s\) \['blocksize'\]"):
        Curriculum.from_dict(bad, global_batch_tokens=GBT, seq_length=SEQ)
    bad = {"phases": [{**cfg["phases"][0], "lr": {"peak_lr": 1e-4}}]}
    with pytest.raises(ValueError, match=r"phases\[0\].lr: unknown key\(s\) \['peak_lr'\]"):
        Curriculum.from_dict(bad, global_batch_tokens=GBT, seq_length=SEQ)
    bad = {"phases": [{**cfg["phases"][0], "lr": {"decay_style": "step"}}]}
    with pytest.raises(ValueError, match=r"phases\[0\].lr.decay_style='step'; allowed"):
        Curriculum.from_dict(bad, global_batch_tokens=GBT, seq_length=SEQ)
    with pytest.raises(ValueError, match=r"curriculum: unknown key\(s\) \['stages'\]"):
        Curriculum.from_dict({"stages": []}, global_batch_tokens=GBT, seq_length=SEQ)


def test_from_omegaconf():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create(
        {"phases": [{"name": "a", "block_size": 32, "blend": [["d", 1.0]], "steps": 4}]}
    )
    cur = Curriculum.from_dict(cfg, global_batch_tokens=GBT, seq_length=SEQ)
    assert cur.total_steps == 4 and cur.phases[0].blend == [("d", 1.0)]


def _lrs(sched, optimizer, n):
    """Learning rate used by each of n steps, as in Megatron's loop (step(1) after an update)."""
    out = []
    for _ in range(n):
        out.append(optimizer.param_groups[0]["lr"])
        sched.step(1)
    return out


def close(a, b):
    """Same float expressions as Megatron's; 1e-12 absorbs rounding (lrs are ~1e-4)."""
    return math.isclose(a, b, rel_tol=0, abs_tol=1e-12)


def test_wsd_values_linear():
    # 20 steps, warmup 4 (init 0), decay over the last 5 → lr_decay_steps = 19, anneal from 14.
    phase = PhaseConfig(
        "p",
        32,
        [("d", 1.0)],
        steps=20,
        lr=LRScheduleConfig(peak=1e-4, min=1e-6, warmup_steps=4, decay_steps=5),
    )
    opt = _optimizer()
    lrs = _lrs(build_phase_scheduler(opt, phase, 20), opt, 20)
    assert lrs[0] == 0.0  # step 0: init lr
    assert close(lrs[2], 0.5e-4)  # mid warmup
    assert close(lrs[4], 1e-4)  # end of warmup: peak
    assert all(close(x, 1e-4) for x in lrs[4:15])  # stable through the last pre-decay step
    assert close(lrs[15], 1e-6 + (1 - 1 / 5) * (1e-4 - 1e-6))  # first decayed step
    assert close(lrs[19], 1e-6)  # last step of the phase trains at min lr
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_wsd_cosine_fraction_and_no_warmup():
    phase = PhaseConfig(
        "p",
        32,
        [("d", 1.0)],
        steps=11,
        lr=LRScheduleConfig(decay_fraction=0.4, decay_style=WSDDecayStyle.COSINE),
    )
    opt = _optimizer()
    lrs = _lrs(build_phase_scheduler(opt, phase, 11), opt, 11)
    assert lrs[0] == 1e-4  # no warmup: start at peak
    # decay over round(0.4 * 11) = 4 steps: anneal starts after step 6
    assert lrs[6] == 1e-4 and lrs[7] < 1e-4
    assert math.isclose(lrs[8], 1e-6 + 0.5 * (1e-4 - 1e-6), rel_tol=1e-12)  # cosine midpoint
    assert math.isclose(lrs[10], 1e-6, rel_tol=1e-12)


def test_reset_at_phase_boundary_and_param_groups():
    cur = Curriculum(
        [
            PhaseConfig(
                "a", 32, [("d", 1.0)], steps=6, lr=LRScheduleConfig(warmup_steps=2, decay_steps=2)
            ),
            PhaseConfig(
                "b",
                16,
                [("d", 1.0)],
                steps=6,
                lr=LRScheduleConfig(peak=5e-5, min=5e-7, warmup_steps=2, decay_steps=2),
            ),
        ],
        GBT,
        SEQ,
    )
    opt = _optimizer()
    seen = []
    sched = None
    for step in range(cur.total_steps):
        active = cur.phase_at(step)
        if active.step_in_phase == 0:
            sched = build_phase_scheduler(opt, active.phase, active.num_steps)
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step(1)
    assert math.isclose(seen[5], 1e-6, rel_tol=1e-12)  # end of phase a: its min
    assert seen[6] == 0.0  # phase b restarts its warmup from init
    assert math.isclose(seen[8], 5e-5, rel_tol=1e-12)  # phase b's own peak
    assert math.isclose(seen[11], 5e-7, rel_tol=1e-12)
    # weight decay of each group is preserved (the no-decay group stays at 0)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert all(g["lr"] == seen[11] for g in opt.param_groups)


def test_megatron_style_param_group_lr_is_overridden_by_phase():
    opt = _optimizer()
    for g in opt.param_groups:  # what Megatron's optimizer puts in its groups
        g.update(max_lr=3e-4, min_lr=3e-5, wd_mult=1.0, default_config=True)
    phase = PhaseConfig("p", 32, [("d", 1.0)], steps=10)
    build_phase_scheduler(opt, phase, 10)
    assert opt.param_groups[0]["lr"] == 1e-4


def test_scheduler_state_round_trip():
    phase = PhaseConfig(
        "p", 32, [("d", 1.0)], steps=30, lr=LRScheduleConfig(warmup_steps=3, decay_fraction=0.5)
    )
    opt = _optimizer()
    sched = build_phase_scheduler(opt, phase, 30)
    _lrs(sched, opt, 17)
    state = sched.state_dict()
    expected = _lrs(sched, opt, 13)

    opt2 = _optimizer()
    resumed = build_phase_scheduler(opt2, phase, 30)  # fresh: Megatron's load adds num_steps
    resumed.load_state_dict(state)
    assert resumed.num_steps == 17
    assert resumed.state_dict() == state
    assert _lrs(resumed, opt2, 13) == expected

    changed = PhaseConfig(
        "p",
        32,
        [("d", 1.0)],
        steps=30,
        lr=LRScheduleConfig(peak=2e-4, warmup_steps=3, decay_fraction=0.5),
    )
    with pytest.raises(AssertionError, match="do not match"):
        build_phase_scheduler(_optimizer(), changed, 30).load_state_dict(state)
