"""The code blocks of docs/hf_interop.md run as written.

The library import block runs in the default suite; the walkthrough (data, a stand-in Hub
folder, import, stage-2 training, export, the model card's code) is slow and runs its bash and
Python blocks in order from a scratch copy of the repository root (``.venv`` linked in), as a
user would from the real one (the Python blocks in one session).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "hf_interop.md"
RELEASED_DOC = REPO / "docs" / "released_model.md"


def _section(title: str, doc: Path = DOC) -> str:
    text = doc.read_text()
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def _blocks(section: str) -> list[tuple[str, str]]:
    return re.findall(r"```(python|bash)\n(.*?)```", section, flags=re.S)


def test_import_snippet_runs(single_process):
    (block,) = [code for lang, code in _blocks(_section("Import a folder (library)"))]
    exec(compile(block, str(DOC), "exec"), {"__name__": "hf_interop_snippet"})


def _run_blocks(blocks, tmp_path, monkeypatch) -> None:
    """The blocks in order from a scratch copy of the repository root (.venv linked in), the
    Python blocks in one session."""
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    }
    env.update(PYTHONPATH=str(REPO), TORCHDYNAMO_DISABLE="1", WANDB_MODE="offline")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "hf_interop_walkthrough"}  # one Python session for all blocks
    for lang, code in blocks:
        if lang == "bash":
            proc = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", code],
                env=env,
                capture_output=True,
                text=True,
                timeout=1800,
            )
            assert proc.returncode == 0, f"{code}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        else:
            exec(compile(code, str(DOC), "exec"), namespace)


@pytest.mark.slow
def test_walkthrough_runs(tmp_path, monkeypatch):
    blocks = _blocks(_section("Walkthrough"))
    assert [lang for lang, _ in blocks] == ["bash", "python", "bash", "python", "python"]
    _run_blocks(blocks, tmp_path, monkeypatch)
    assert (tmp_path / "runs/hf_walkthrough/hf/modeling_nemotron_twotower.py").is_file()


@pytest.mark.slow
def test_released_finetune_walkthrough_runs(tmp_path, monkeypatch):
    """docs/released_model.md: stand-in folder → import-twotower → a new phase → export-hf →
    the card's code; the export is again the released layout."""
    blocks = _blocks(_section("Fine-tune walk-through", RELEASED_DOC))
    assert [lang for lang, _ in blocks] == ["bash", "python"]
    (tmp_path / "scripts").symlink_to(REPO / "scripts")
    _run_blocks(blocks, tmp_path, monkeypatch)
    config = (tmp_path / "runs/released/hf/config.json").read_text()
    assert '"NemotronHTwoTowerForCausalLM"' in config
