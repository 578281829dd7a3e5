"""Where the docs' commands run: one sandbox folder per test session that links every top-level
entry that git tracks, and ``.venv`` (``scripts``, ``recipes``, ...), so the pages' relative
paths (``.venv/bin/python``, ``runs/demo_data``) work as written and whatever they write lands
in the sandbox, with ``docs_test_logs/`` (every command's output) and ``docs_test_report.txt``
(the commands, their exit codes and the numbers read). A command that already ran in this
session (same text, comments aside) is not run again: its output is reused, as its files are
still there.

``TWOTOWER_DOCS_DEMO=DIR`` links the entries of an existing ``twotower-demo`` output folder (what
``runs/demo`` holds after the demo) into the sandbox's ``runs/demo`` instead of training one, for
the pages that only read the demo model (nothing is written into DIR).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.docs.markup import REPO

RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
DEMO_ENV = "TWOTOWER_DOCS_DEMO"
# What a page's commands may need made first, each as the commands the pages document for it.
NEEDS = {
    "demo_data": [".venv/bin/python -m data_tools.demo_corpus --out runs/demo_data"],
    "demo_ar": [
        ".venv/bin/python -m data_tools.demo_corpus --out runs/demo_data",
        ".venv/bin/twotower-train",
    ],
    "demo": [".venv/bin/twotower-demo"],
}


@dataclass
class Ran:
    command: str
    returncode: int
    output: str


def command_key(command: str) -> str:
    """The command without its trailing ``  # comment`` (two runs of one command share it)."""
    return "\n".join(re.sub(r"\s+#\s.*$", "", line).rstrip() for line in command.splitlines())


class Sandbox:
    def __init__(self, root: Path):
        self.root = root
        self.ran: dict[str, Ran] = {}
        # The checkout's tracked files and its venv; nothing a command writes reaches the checkout.
        tracked = subprocess.run(
            ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split()
        for name in sorted({path.split("/")[0] for path in tracked} | {".venv"}):
            (root / name).symlink_to(REPO / name)
        (root / "runs").mkdir()
        (root / "docs_test_logs").mkdir()  # every command's output, numbered in run order
        demo = os.environ.get(DEMO_ENV)
        if demo:  # its entries linked one by one: what the pages write next to them stays here
            (root / "runs" / "demo").mkdir()
            for entry in Path(demo).resolve().iterdir():
                (root / "runs" / "demo" / entry.name).symlink_to(entry)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in (*RENDEZVOUS, "TWOTOWER_DEBUG")}
        env.setdefault("TORCHDYNAMO_DISABLE", "1")
        env.setdefault("WANDB_MODE", "offline")
        return env

    def run(self, command: str, *, python: bool = False, timeout: float = 3600) -> Ran:
        key = ("python:" if python else "") + command_key(command)
        if key in self.ran:
            return self.ran[key]
        if python:
            args = [str(self.root / ".venv" / "bin" / "python"), "-"]
            stdin = command
        else:
            args = ["bash", "-o", "pipefail", "-c", command]
            stdin = ""
        try:
            proc = subprocess.run(
                args,
                cwd=self.root,
                env=self.env(),
                input=stdin,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
            )
            ran = Ran(command, proc.returncode, proc.stdout + proc.stderr)
        except subprocess.TimeoutExpired as expired:
            partial = (expired.stdout or b"") + (expired.stderr or b"")
            text = partial.decode(errors="replace") if isinstance(partial, bytes) else partial
            ran = Ran(command, -1, text + f"\n[docs test: timed out after {timeout:.0f} s]")
        self.ran[key] = ran
        log = self.root / "docs_test_logs" / f"{len(self.ran):03d}.log"
        log.write_text(f"$ {command}\n[exit code {ran.returncode}]\n{ran.output}")
        self.note(f"{log}: exit code {ran.returncode}: {command.splitlines()[0][:100]}")
        return ran

    def note(self, *lines: str) -> None:
        """Lines for the session's report (``docs_test_report.txt``, and stdout: ``-rA``)."""
        with open(self.root / "docs_test_report.txt", "a") as report:
            for line in lines:
                print(line)
                report.write(line + "\n")

    def provide(self, need: str) -> None:
        if need not in NEEDS:
            raise pytest.UsageError(f"docs markup needs={need}: not one of {sorted(NEEDS)}")
        if need == "demo" and os.environ.get(DEMO_ENV):
            return
        for command in NEEDS[need]:
            ran = self.run(command, timeout=4 * 3600)
            assert ran.returncode == 0, f"needs={need}: {command} failed\n{ran.output[-4000:]}"


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory) -> Sandbox:
    return Sandbox(tmp_path_factory.mktemp("docs_sandbox"))
