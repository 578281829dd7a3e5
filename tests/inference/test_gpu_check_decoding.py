"""``scripts/gpu_check_decoding.py``, the decoding rows of the GPU check: its CPU dry path runs
the proxy row's code at tiny sizes here, and the rows a GPU host runs are built as intended."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def decoding():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import gpu_check_decoding

        yield gpu_check_decoding
    finally:
        sys.path.remove(str(SCRIPTS))


def test_proxy_row_runs_at_tiny_sizes_on_the_cpu(decoding, tmp_path, single_process):
    out = tmp_path / "proxy"
    argv = decoding.proxy_command(out, cuda=False, new_tokens=6)[2:]  # after python SCRIPT
    argv = [a for a in argv if a != "--compile"]
    argv.insert(argv.index("--"), "--tiny")
    argv += ["--repeats", "1", "--cost-repeats", "2"]  # later flags win
    decoding.main(argv)
    report = json.loads((out / "result.json").read_text())
    assert report["model"] == "Nano-shaped MoE proxy (tiny)"
    assert report["compile_mode"] == "default"  # inductor's on the CPU
    assert report["device"] == "cpu" and report["batch_sizes"] == [1]
    names = [r["name"] for r in report["results"]]
    assert names[0] == "AR" and "diffusion γ=0.8" in names and "speculative" in names
    assert report["experts_touched"], "the proxy is an MoE model"
    cell = decoding.summary(out / "result.json")
    assert cell.startswith("eager: AR ") and "diffusion γ=0.8" in cell and "speculative" in cell
    assert "AR step" in cell and "denoiser block" in cell


def test_rows_of_a_gpu_host(decoding, tmp_path, monkeypatch):
    """On CUDA: every row runs eager and compiled on the device, the proxy at Nano sizes; on a
    CPU (the dry run) the proxy runs at tiny sizes, eager, and a missing demo model is a SKIP."""
    ran, recorded = [], []

    def run(ctx, name, argv, timeout):
        ran.append(argv)
        return 1, "not run in this test"

    def record(ctx, check, ok, start, detail):
        recorded.append((check, ok))

    args = SimpleNamespace(demo_model=[str(tmp_path / "hf")], new_tokens=32, stage_timeout=60)
    ctx = SimpleNamespace(args=args, out=tmp_path)
    decoding.step(ctx, True, run, record)
    demo, proxy = ran
    assert demo[:3] == [sys.executable, decoding.SCRIPT, "--"]
    assert demo[demo.index("--model") + 1] == str(tmp_path / "hf")
    for argv in (demo, proxy):
        assert argv[argv.index("--device") + 1] == "cuda" and "--compile" in argv
        assert argv[argv.index("--batch-sizes") + 1] == "1"
    assert "--proxy" in proxy and "--smoke" in proxy and "--tiny" not in proxy
    assert [ok for _, ok in recorded] == [False, False]  # both failed: not run here
    ran.clear(), recorded.clear()
    ctx.args.demo_model = None
    monkeypatch.setattr(decoding, "REPO", tmp_path)  # a checkout without runs/demo/hf
    decoding.step(ctx, False, run, record)
    [proxy] = ran
    assert "--tiny" in proxy and "--compile" not in proxy
    assert proxy[proxy.index("--device") + 1] == "cpu"
    assert recorded[0] == ("decoding tok/s (demo model)", None)  # SKIP


def test_export_row_on_the_cpu(two_tower_checkpoint, tmp_path, single_process):
    """``scripts/gpu_check_export.py`` (the export + context-only row) runs here as on a GPU
    host: the export, a context-only load of it with AR tokens equal to the whole model's; the
    row passes on that result and fails when AR differs."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        import gpu_check_export
    finally:
        sys.path.remove(str(SCRIPTS))
    result = gpu_check_export.main(
        [str(two_tower_checkpoint), str(tmp_path / "hf"), "--new-tokens", "4"]
    )
    assert result["denoiser_on_meta"] and result["same_ar"] and result["checkpoint_same_ar"]
    assert result["export_gpu_bytes"] == 0 and result["device"] == "cpu"
    assert 0 < result["context_bytes"] < 0.6 * result["whole_bytes"]
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    recorded = []
    ctx = SimpleNamespace(args=SimpleNamespace(new_tokens=4), out=tmp_path)
    on_gpu = {**result, "export_gpu_bytes": 4096}  # the NCCL object collectives' few bytes
    for same, expected in ((True, True), (False, False)):
        line = json.dumps({**on_gpu, "same_ar": same})
        gpu_check_export.step(
            ctx,
            two_tower_checkpoint,
            lambda *a, line=line: (0, line),
            lambda c, n, ok, s, d: recorded.append(ok),
        )
        assert recorded[-1] is expected
