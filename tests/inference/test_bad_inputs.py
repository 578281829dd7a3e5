"""A user's bad inputs to ``twotower-generate`` and ``twotower-convert export-hf``, through the
real CLI (subprocesses): damaged copies are built here; each case prints one
``<tool>: error: …`` line naming the file or option, exits with code 2 and writes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from twotower_train.errors import UserError
from twotower_train.inference.load import run_tokenizer

REPO = Path(__file__).resolve().parents[2]
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


def _run(module: str, *args, stdin: bytes | None = None, cwd=REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (*RENDEZVOUS, "TWOTOWER_DEBUG")}
    env.update(PYTHONPATH=str(REPO), TORCHDYNAMO_DISABLE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=cwd,
        env=env,
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=600,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode(errors="replace")
    )


def generate(*args, **kwargs):
    return _run("twotower_train.inference", *args, **kwargs)


def convert(*args, **kwargs):
    return _run("twotower_train.convert", *args, **kwargs)


def one_line(proc: subprocess.CompletedProcess, tool: str, *expected: str) -> str:
    """The one error line (stderr holds nothing else), exit code 2."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: error: "), proc.stderr[-3000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def _iter(root: Path) -> Path:
    return root / (root / "latest").read_text().strip()


@pytest.fixture
def damaged_copy(two_tower_checkpoint, tmp_path):
    """A copy of the stage-2 run's checkpoint root; the test damages one file of it."""
    return Path(shutil.copytree(two_tower_checkpoint, tmp_path / "checkpoints"))


def test_non_utf8_prompts_file_and_stdin(tmp_path):
    bad = tmp_path / "prompts.txt"
    bad.write_bytes(b"caf\xe9 au lait\n")
    one_line(
        generate("--model", tmp_path, "--prompts", bad),
        "twotower-generate",
        f"--prompts {bad} is not UTF-8",
    )
    one_line(
        generate("--model", tmp_path, stdin=b"\xff\xfe bad\n"),
        "twotower-generate",
        "stdin is not UTF-8",
    )


def test_context_only_takes_ar_alone(tmp_path):
    one_line(
        generate(
            "--model", tmp_path, "--context-only", "--mode", "mask_diffusion", "--prompt", "a"
        ),
        "twotower-generate",
        "--context-only runs --mode ar only, not --mode mask_diffusion",
    )
    one_line(
        generate("--model", tmp_path, "--context-only", "--mode", "ar", "--denoiser-device", "cpu"),
        "twotower-generate",
        "--context-only loads no denoiser; drop --denoiser-device",
    )


def test_prompt_longer_than_the_context_is_refused_or_truncated_on_request(two_tower_checkpoint):
    long_prompt = "the river runs to the sea " * 1000  # > 4,096 tokens of the test tokenizer
    line = one_line(
        generate("--model", two_tower_checkpoint, "--prompt", long_prompt, "--max-new-tokens", "4"),
        "twotower-generate",
        "does not fit the model's context of 4096 tokens",
        "--truncate-prompts",
    )
    assert "prompt 1 has" in line
    ok = generate(
        "--model",
        two_tower_checkpoint,
        "--prompt",
        long_prompt,
        "--max-new-tokens",
        "4",
        "--block-size",
        "4",
        "--truncate-prompts",
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "tokens=4" in ok.stdout.splitlines()[-1]


@pytest.mark.parametrize("name", [".metadata", "metadata.json", "__0_0.distcp"])
def test_truncated_checkpoint_file_names_the_file_and_the_intact_one(damaged_copy, name):
    latest = _iter(damaged_copy)
    target = latest / name
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    others = sorted(p for p in damaged_copy.glob("iter_*") if p != latest)
    expected = f"the newest intact checkpoint there is {others[-1]}" if others else "no intact"
    one_line(
        generate("--model", damaged_copy, "--prompt", "the river"),
        "twotower-generate",
        f"{target} is truncated",
        expected,
    )


def test_export_refuses_a_damaged_optimizer_part_and_bad_settings(damaged_copy, tmp_path):
    out = tmp_path / "hf"
    for bad in ("0", "-3"):
        one_line(
            convert("export-hf", damaged_copy, out, "--block-size", bad),
            "twotower-convert",
            f"--block-size {bad} must be a positive",
        )
    one_line(
        convert("export-hf", damaged_copy, out, "--max-shard-size", "0"),
        "twotower-convert",
        "--max-shard-size 0 must be positive",
    )
    # The distcp file holds the optimizer's moments next to the denoiser: export reads only the
    # model, so without the integrity check a damaged optimizer part exported with rc 0.
    shard = _iter(damaged_copy) / "__0_0.distcp"
    with open(shard, "r+b") as stream:
        stream.truncate(shard.stat().st_size - 16)
    one_line(convert("export-hf", damaged_copy, out), "twotower-convert", f"{shard} is truncated")
    assert not out.exists() and not list(tmp_path.glob(".hf*"))


def test_export_index_and_shards_are_verified(two_tower_checkpoint, tmp_path):
    out = tmp_path / "hf"
    made = convert("export-hf", two_tower_checkpoint, out, "--max-shard-size", "200KB")
    assert made.returncode == 0, made.stderr[-3000:]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    (out / shards[-1]).unlink()
    one_line(
        generate("--model", out, "--prompt", "the river"),
        "twotower-generate",
        f"{out / shards[-1]} is missing",
    )
    first = out / shards[0]
    first.write_bytes(first.read_bytes()[:-10])
    one_line(
        generate("--model", out, "--prompt", "the river"),
        "twotower-generate",
        f"{first} is truncated",
    )


def test_the_run_tokenizer_is_found_from_another_directory(tmp_path, monkeypatch):
    start = tmp_path / "moved_here"
    (start / "data" / "tok").mkdir(parents=True)
    ckpt = start / "runs" / "x" / "checkpoints" / "iter_0000001"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text("{}")
    cfg = SimpleNamespace(
        data=SimpleNamespace(tokenizer="data/tok"),
        checkpoint=SimpleNamespace(dir="runs/x/checkpoints"),
    )
    monkeypatch.chdir(tmp_path)  # not the run's start folder: "data/tok" is not here
    assert run_tokenizer(ckpt, cfg, option="--tokenizer") == start / "data" / "tok"
    cfg.data.tokenizer = "data/elsewhere"
    with pytest.raises(UserError, match="pass --tokenizer DIR"):
        run_tokenizer(ckpt, cfg, option="--tokenizer")
