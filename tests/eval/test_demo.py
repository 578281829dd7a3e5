"""The README demo's settings (``twotower_train.demo.cli``): every variant composes into valid
recipes for both stages (a short phase included), a bad stage-2 setting stops the pipeline
before any work, and ``--check`` names the threshold a report misses. The runs themselves are
measured in docs/results.md; ``.ci/run`` runs ``twotower-demo --fast --check``."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from twotower_train.demo import cli as demo
from twotower_train.reproduce.config import ReproduceConfig
from twotower_train.training.recipes import load_config


def _recipes(settings: demo.Settings, seed: int = 0):
    args = ReproduceConfig.from_argv(["--out", "unused", *demo.pipeline_arguments(settings, seed)])
    common = ["data.root=unused", *args.common]
    stage1 = load_config(args.recipe, common + [*args.stage1_set], check_data=False)
    stage2 = load_config(f"{args.recipe}_twotower", common + [*args.stage2_set], check_data=False)
    return stage1, stage2


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param(demo.DEMO_SETTINGS, id="demo"),
        pytest.param(demo.FAST_SETTINGS, id="fast"),
        # issue 24: ten-step phases broke the recipes' fixed 10-step warmup after stage 1 had run
        pytest.param(
            dataclasses.replace(demo.FAST_SETTINGS, stage1_steps=10, stage2_steps=(10, 10, 10)),
            id="ten-step phases",
        ),
        pytest.param(
            dataclasses.replace(demo.FAST_SETTINGS, stage1_steps=3, stage2_steps=(3, 2, 3)),
            id="shortest phases",
        ),
    ],
)
def test_every_variant_composes_into_valid_recipes(settings):
    stage1, stage2 = _recipes(settings, seed=7)
    assert stage1.curriculum.phase_steps == (settings.stage1_steps,)
    assert stage2.curriculum.phase_steps == settings.stage2_steps
    for phase in (*stage1.curriculum.phases, *stage2.curriculum.phases):
        assert phase.lr.warmup_steps <= phase.steps // 10
    assert stage2.curriculum.phases[0].lr.peak == settings.stage2_lr
    assert stage1.training.seed == stage2.training.seed == 7
    assert stage1.data.seed == 7


def test_a_bad_stage2_setting_fails_before_anything_runs(tmp_path, tool_env):
    out = tmp_path / "repro"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "twotower_train.reproduce",
            "--out",
            str(out),
            "--set",
            "model=tiny",
            "--stage2-set",
            "curriculum.phases.2.steps=10",
        ],
        env=tool_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stderr
    assert "warmup_steps (10) + decay steps" in lines[-1] and len(lines) == 1, run.stderr
    assert not out.exists()


def _report(ar: float, diffusion: float, per_forward: float) -> dict:
    return {
        "modes": [
            {"name": "AR", "exact_match": ar},
            {
                "name": "diffusion γ=0.8",
                "exact_match": diffusion,
                "tokens_per_denoiser_forward": per_forward,
            },
        ]
    }


def test_check_names_the_missed_threshold():
    settings = demo.DEMO_SETTINGS  # AR ≥ 0.95; γ=0.8 keeps ≥ 95 % at ≥ 2 tokens per forward
    assert demo.check(_report(1.0, 0.96, 2.1), settings) is None
    assert demo.check(_report(0.207, 0.16, 1.51), settings).startswith("AR exact match 0.207")
    assert demo.check(_report(1.0, 0.94, 2.5), settings).startswith(
        "γ=0.8 quality kept (exact match / AR's) 0.940"
    )
    assert demo.check(_report(1.0, 1.0, 1.99), settings).startswith(
        "γ=0.8 tokens per denoiser forward 1.990"
    )
    assert demo.check(_report(0.0, 0.0, 0.0), settings).startswith("AR exact match 0.000")
