"""Every documented command runs as written on a CPU machine, or its page says it needs a GPU;
the numbers a page states for a command's output hold within the page's stated variation.

The commands and numbers come from the pages themselves (their markup: tests/docs/markup.py,
docs/testing.md). ``test_markup`` (default suite, runs nothing) checks that every command block
is classified; ``test_fast_commands`` runs the ``run`` commands (default suite);
``test_page_commands`` (``-m slow``; ``bash scripts/test_docs.sh``) runs a page's ``run`` and
``slow`` commands in page order, after what they ``need``, and checks its numbers.
"""

from __future__ import annotations

import re

import pytest

from tests.docs.markup import PAGES, Block, MarkupError, check_values, read_page

GPU_WORDS = re.compile(r"\b(GPUs?|CUDA|H100|H200)\b")


def _blocks(page) -> list[Block]:
    try:
        return read_page(page)[0]
    except MarkupError:
        return []  # test_markup names the problem


def _gpu_stated(block: Block) -> bool:
    """The block (its commands and comments) or the paragraph above it names a GPU."""
    return bool(GPU_WORDS.search(block.body) or GPU_WORDS.search(block.context))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_markup(page):
    try:
        blocks, visible = read_page(page)
    except MarkupError as error:
        pytest.fail(str(error))
    problems = []
    for block in blocks:
        for command in block.commands:
            first = command.text.splitlines()[0][:70]
            if not command.kind:
                problems.append(
                    f"{block.where}: command {command.index} ({first}) has no docs-test class"
                )
            elif command.kind == "gpu" and not _gpu_stated(block):
                problems.append(
                    f"{block.where}: command {command.index} is gpu, but neither the block nor "
                    "the paragraph above it says so"
                )
        for check in block.checks:
            if check.written not in visible:
                problems.append(
                    f"{block.where}: docs-check {check.describe()}: "
                    f"the page does not state {check.written}"
                )
        if block.checks and not any(c.kind in ("run", "slow") for c in block.commands):
            problems.append(f"{block.where}: docs-check on a block that does not run")
        if block.continues and block.language != "python":
            problems.append(f"{block.where}: continues is for python blocks")
    assert not problems, "\n".join(problems)


def _run_block(sandbox, block: Block, kinds: tuple[str, ...], previous_python: str) -> list[str]:
    """Run the block's commands of those kinds; the problems found (failures, drifted numbers)."""
    if any(c.kind == "slow" and c.kind in kinds for c in block.commands):
        for need in block.needs:  # for the slow commands: a `run` command needs nothing made
            sandbox.provide(need)
    outputs: dict[int, str] = {}
    problems: list[str] = []
    for command in block.commands:
        if command.kind not in kinds:
            continue
        timeout = block.timeout or (600 if command.kind == "run" else 4 * 3600)
        if block.language == "python":
            source = (previous_python + "\n" if block.continues else "") + command.text
            ran = sandbox.run(source, python=True, timeout=timeout)
        else:
            ran = sandbox.run(command.text, timeout=timeout)
        outputs[command.index] = ran.output
        if ran.returncode != 0:
            problems.append(
                f"{block.where}: command {command.index} exited {ran.returncode}:\n"
                f"$ {command.text}\n{ran.output[-3000:]}"
            )
    if (
        block.checks
        and not problems
        and all(c.kind in kinds for c in block.commands if c.kind in ("run", "slow"))
    ):
        measured: list[str] = []
        problems += [f"{block.where}: {p}" for p in check_values(block.checks, outputs, measured)]
        sandbox.note(*(f"{block.where}: {m}" for m in measured))
    return problems


def _run_page(sandbox, page, kinds: tuple[str, ...]) -> None:
    problems, previous_python = [], ""
    for block in _blocks(page):
        if any(c.kind in kinds for c in block.commands):
            problems += _run_block(sandbox, block, kinds, previous_python)
        if block.language == "python":
            previous_python = (previous_python + "\n" if block.continues else "") + block.body
    assert not problems, "\n\n".join(problems)


FAST_PAGES = [p for p in PAGES if any(c.kind == "run" for b in _blocks(p) for c in b.commands)]
RUN_PAGES = [
    p for p in PAGES if any(c.kind in ("run", "slow") for b in _blocks(p) for c in b.commands)
]


@pytest.mark.parametrize("page", FAST_PAGES, ids=lambda p: p.name)
def test_fast_commands(sandbox, page):
    _run_page(sandbox, page, ("run",))


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_PAGES, ids=lambda p: p.name)
def test_page_commands(sandbox, page):
    _run_page(sandbox, page, ("run", "slow"))


def test_a_drifted_number_fails(tmp_path):
    text = (
        "Prints 0.65 ± 0.11 and 6–54 s.\n\n"
        "<!-- docs-test: run -->\n"
        "<!-- docs-check: `acc (\\d\\.\\d+)` = 0.65 ± 0.11 -->\n"
        "<!-- docs-check: `in ([\\d.]+)s` in 6–54 -->\n"
        "```bash\necho acc 0.70 in 3.5s\n```\n"
    )
    blocks, visible = read_page(tmp_path / "probe.md", text)
    (block,) = blocks
    assert [c.written for c in block.checks] == ["0.65", "6–54"]
    assert "0.65" in visible and "docs-check" not in visible
    assert check_values(block.checks, {1: "acc 0.70 in 7.5s"}) == []
    problems = check_values(block.checks, {1: "acc 0.77 in 3.5s"})
    assert len(problems) == 2 and "printed 0.77" in problems[0] and "printed 3.5" in problems[1]
    assert "not printed" in check_values(block.checks, {1: "nothing"})[0]


def test_numbers_as_written_per_command_and_scaled(tmp_path):
    text = (
        "AR 1.000, 26.86 %.\n\n<!-- docs-test: slow -->\n"
        "<!-- docs-check: 2 `AR ([\\d.]+)` = 1.000 -->\n"
        "<!-- docs-check: `acc ([\\d.]+)` * 100 = 26.86 -->\n"
        "```bash\necho AR 0.5\necho AR 1.0004 acc 0.26858\n```\n"
    )
    (block,) = read_page(tmp_path / "probe.md", text)[0]
    assert check_values(block.checks, {1: "AR 0.5", 2: "AR 1.0004 acc 0.26858"}) == []
    problems = check_values(block.checks, {1: "AR 1.0", 2: "AR 1.0006 acc 0.2687"})
    assert len(problems) == 2 and "printed 1.0006" in problems[0], problems
    assert "= 26.87" in problems[1], problems


def test_command_numbers_and_classes(tmp_path):
    text = (
        "Needs a CUDA host.\n\n"
        "<!-- docs-test: gpu 1,3; skip 4 (installs); run; needs=demo_data; timeout=30 -->\n"
        "```bash\npython a.py    # GPU\n.venv/bin/python b.py \\\n    --x 1\n# a comment\n"
        "python c.py\ncat <<'EOF'\nline\nEOF\n"
        ".venv/bin/python -c \"\nprint('a # b')\nprint(1)\"  # don't\n```\n"
    )
    (block,) = read_page(tmp_path / "probe.md", text)[0]
    kinds = [(c.index, c.kind) for c in block.commands]
    assert kinds == [(1, "gpu"), (2, "run"), (3, "gpu"), (4, "skip"), (5, "run")]
    assert block.commands[1].text.endswith("--x 1") and block.commands[3].text.endswith("EOF")
    assert block.commands[4].text.count("\n") == 2
    assert block.needs == ("demo_data",) and block.timeout == 30 and "CUDA" in block.context
    for bad in ("skip 1", "fast", "run 9"):
        with pytest.raises(MarkupError):
            read_page(tmp_path / "probe.md", text.replace("gpu 1,3; skip 4 (installs); run", bad))
