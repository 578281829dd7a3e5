"""``twotower-generate``: a real run through ``python -m`` (stdin prompts, streamed blocks, the
summary line) and one-line errors for bad modes, knobs and paths."""

from __future__ import annotations

import subprocess
import sys

import pytest

from twotower_train.inference.cli import main

MODULE = "twotower_train.inference"


def test_generate_streams_blocks_and_reports(two_tower_checkpoint, tool_env):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            MODULE,
            "--model",
            str(two_tower_checkpoint),
            "--mode",
            "speculative",
            "--block-size",
            "4",
            "--max-new-tokens",
            "8",
        ],
        input="The capital of France is\nHello\n",
        capture_output=True,
        text=True,
        env=tool_env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("The capital of France is") and lines[1].startswith("Hello")
    summary = lines[-1]
    assert summary.startswith("# mode=speculative prompts=2 tokens=")
    for key in ("tokens/s=", "tokens/(context+denoiser) forward=", "accepted/verify forward="):
        assert key in summary


def test_batched_rows_stream_one_line_per_block(two_tower_checkpoint, capsys):
    main(
        [
            "--model",
            str(two_tower_checkpoint),
            "--mode",
            "mask_diffusion",
            "--block-size",
            "4",
            "--steps-per-block",
            "2",
            "--max-new-tokens",
            "8",
            "--batch-size",
            "2",
            "--prompt",
            "one",
            "--prompt",
            "two",
        ]
    )
    out = capsys.readouterr().out.splitlines()
    # Two blocks of 4 per row: [0] and [1] each stream twice, then the summary.
    assert sorted(line.split()[0] for line in out[:-1]) == ["[0]", "[0]", "[1]", "[1]"]
    assert "tokens/denoiser forward=" in out[-1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mode", "beam"], "invalid choice: 'beam'"),
        (["--confidence-threshold", "1.5"], "confidence_threshold=1.5 must be in (0, 1]"),
        (["--confidence-threshold", "0"], "confidence_threshold=0.0 must be in (0, 1]"),
        (["--steps-per-block", "0"], "steps_per_block=0 must be positive"),
        (["--block-size", "-2"], "block_size=-2 must be positive"),
        (["--mode", "ar", "--block-size", "4"], "block_size not a knob of mode 'ar'"),
        (["--mode", "speculative", "--temperature", "0.7"], "temperature=0"),
        (["--model", "/nonexistent/ckpt"], "neither a trainer checkpoint"),
    ],
)
def test_bad_input_is_one_line(args, message, capsys, tmp_path):
    argv = ["--prompt", "hi", *args]
    if "--model" not in args:
        argv = ["--model", str(tmp_path), *argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("twotower-generate: error: ") and "\n" not in err
    assert message in err
