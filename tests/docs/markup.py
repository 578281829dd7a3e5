"""The docs pages' own test markup, read from the page (docs/testing.md describes it).

Every fenced ``bash``/``sh``/``python`` block of README.md and docs/*.md is a list of commands
(a ``python`` block is one command: the snippet). HTML comments on the lines right above the
fence (invisible on the rendered page) say what the docs test does with them:

``<!-- docs-test: run 1; slow 2-3; gpu 4; skip 5 (why); needs=demo -->``
    Parts separated by ``;``: a class — ``run`` (the default suite), ``slow`` (``-m slow``),
    ``gpu`` (not run on a CPU; the block or the paragraph above it must name a GPU / CUDA) or
    ``skip`` (not run; the reason in parentheses required) — with the 1-based numbers of the
    commands it covers (none: every command no other part names), or an option: ``needs=a,b``
    (made before the slow commands: ``NEEDS`` in conftest.py; a ``run`` command needs
    nothing), ``timeout=SECONDS`` (per command), ``continues`` (a python block that goes on
    from the page's previous python block, in one process).
``<!-- docs-check: [N] `REGEX` [* F | / F] = V [± T] -->`` or ``... in A–B -->``
    A number that command N (or the whole block) prints: the regex's first group (commas
    dropped) of its next match in the output (stdout and stderr; checks with one regex take
    successive matches), times or divided by F, must lie within V ± T, within A–B, or round to
    V as written (``= 1.000``: 0.9995–1.0005). The number as written (``0.65``, ``6–54``) must
    appear on the page itself, outside comments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND_LANGUAGES = {"bash", "sh", "shell", "python"}
CLASSES = ("run", "slow", "gpu", "skip")
FENCE = re.compile(r"^```(\S*)\s*$")
COMMENT = re.compile(r"^<!--\s*(docs-test|docs-check):\s*(.*?)\s*-->\s*$")
PART = re.compile(r"^(run|slow|gpu|skip)\s*([\d,\s-]*?)\s*(?:\((.+)\))?$")
CHECK = re.compile(
    r"^(?:(\d+)\s+)?`(.+)`(?:\s*([*/])\s*(\S+))?"
    r"\s+(?:=\s*(\S+)(?:\s*±\s*(\S+))?|in\s+([^\s–]+)\s*–\s*(\S+))$"
)
NUMBER = re.compile(r"^[+-]?\d+(?:\.\d+)?$")
FACTOR = re.compile(r"^\d+(?:\.\d+)?(?:e\d+)?$")


class MarkupError(ValueError):
    """A docs page's markup that cannot be read (the message names the page and line)."""


@dataclass
class Check:
    pattern: str
    low: float
    high: float
    written: str  # the number as the page states it: "0.65", "6–54"
    line: int
    command: int | None = None  # only this command's output (1-based), else the whole block's
    scale: float = 1.0  # the printed number times this is the page's (0.2686 * 100 = 26.86 %)

    def verify(self, value: float) -> bool:
        return self.low - 1e-12 <= value <= self.high + 1e-12

    def describe(self) -> str:
        return f"`{self.pattern}` {self.written} (line {self.line})"


@dataclass
class Command:
    text: str
    index: int  # 1-based within its block
    kind: str = ""  # one of CLASSES once classified
    reason: str = ""


@dataclass
class Block:
    page: Path
    line: int  # the opening fence's line (1-based)
    language: str
    body: str
    context: str  # the paragraph above the block (for "needs a GPU")
    commands: list[Command] = field(default_factory=list)
    needs: tuple[str, ...] = ()
    timeout: float | None = None
    continues: bool = False
    checks: list[Check] = field(default_factory=list)
    marked: bool = False

    @property
    def where(self) -> str:
        return f"{_name(self.page)}:{self.line}"


def _open_quote(text: str) -> str:
    """The quote character still open at the end of shell ``text`` ('' if none)."""
    quote, escaped = "", False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            while i < len(text) and text[i] != "\n":  # a comment: skip to the line's end
                i += 1
            return _open_quote(text[i:]) if i < len(text) else ""
    return quote


def split_commands(body: str) -> list[str]:
    """Shell commands of a block: backslash continuations and multi-line quotes joined, heredocs
    kept whole, comment lines and blank lines dropped."""
    commands: list[str] = []
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        text = line
        while (text.endswith("\\") or _open_quote(text)) and i < len(lines):
            text += "\n" + lines[i]
            i += 1
        heredoc = re.search(r"<<-?\s*'?\"?(\w+)'?\"?", text)
        if heredoc:
            end = heredoc.group(1)
            while i < len(lines):
                text += "\n" + lines[i]
                i += 1
                if lines[i - 1].strip() == end:
                    break
        commands.append(text)
    return commands


def _indices(spec: str, count: int, where: str) -> list[int]:
    chosen: list[int] = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        low, _, high = item.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise MarkupError(f"{where}: command numbers {spec!r} are not like 1-2,4")
        chosen.extend(range(int(low), int(high or low) + 1))
    bad = [n for n in chosen if not 1 <= n <= count]
    if bad:
        raise MarkupError(f"{where}: the block has {count} commands, not {bad}")
    return chosen


def _apply_test(block: Block, spec: str, where: str) -> None:
    block.marked = True
    rest: tuple[str, str] | None = None
    for part in filter(None, (p.strip() for p in re.split(r";(?![^(]*\))", spec))):
        key, eq, value = part.partition("=")
        if eq and key.strip() in {"needs", "timeout"}:
            if key.strip() == "needs":
                block.needs = tuple(v.strip() for v in value.split(",") if v.strip())
            else:
                block.timeout = float(value)
            continue
        if part == "continues":
            block.continues = True
            continue
        match = PART.match(part)
        if not match:
            raise MarkupError(f"{where}: {part!r} is not one of {', '.join(CLASSES)} [N-M] (why)")
        kind, numbers, reason = match.groups()
        if kind == "skip" and not reason:
            raise MarkupError(f"{where}: skip needs a reason in parentheses")
        if numbers.strip():
            for n in _indices(numbers, len(block.commands), where):
                block.commands[n - 1].kind, block.commands[n - 1].reason = kind, reason or ""
        else:
            rest = (kind, reason or "")
    for command in block.commands:
        if not command.kind and rest:
            command.kind, command.reason = rest


def _parse_check(spec: str, line: int, where: str) -> Check:
    match = CHECK.match(spec)
    if not match:
        raise MarkupError(
            f"{where}: docs-check {spec!r} is not [N] `REGEX` [* S] = V [± T] or ... in A–B"
        )
    command, pattern, op, factor, value, tolerance, low, high = match.groups()
    try:
        if re.compile(pattern).groups < 1:
            raise MarkupError(f"{where}: docs-check regex {pattern!r} needs a (group)")
    except re.error as error:
        raise MarkupError(f"{where}: docs-check regex {pattern!r}: {error}") from None
    numbers = [n for n in (value, tolerance, low, high) if n is not None]
    if not all(NUMBER.match(n) for n in numbers) or (factor and not FACTOR.match(factor)):
        raise MarkupError(f"{where}: docs-check numbers {numbers} are not plain numbers")
    scale = 1.0 if factor is None else float(factor) if op == "*" else 1 / float(factor)
    extra = {"command": int(command) if command else None, "scale": scale}
    if value is not None:
        # No ± T: as written, i.e. to the number's last decimal (1.000 is 0.9995 to 1.0005).
        decimals = len(value.partition(".")[2])
        t = float(tolerance) if tolerance is not None else 0.5 * 10**-decimals
        v = float(value)
        return Check(pattern, v - t, v + t, value, line, **extra)
    return Check(pattern, float(low), float(high), f"{low}–{high}", line, **extra)


def _name(page: Path) -> str:
    return str(page.relative_to(REPO)) if page.is_relative_to(REPO) else page.name


def read_page(page: Path, text: str | None = None) -> tuple[list[Block], str]:
    """The page's command blocks with their markup, and its visible text (comments removed)."""
    lines = (page.read_text() if text is None else text).splitlines()
    blocks: list[Block] = []
    pending: list[tuple[int, str, str]] = []  # (line, kind, spec) of comments above a fence
    visible: list[str] = []
    paragraph: list[str] = []  # the lines of the current paragraph (or the last one)
    blank = True
    i = 0
    while i < len(lines):
        line = lines[i]
        comment = COMMENT.match(line.strip())
        fence = FENCE.match(line)
        if comment:
            pending.append((i + 1, comment.group(1), comment.group(2)))
        elif fence:
            start, language = i + 1, fence.group(1).lower()
            body = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            visible.extend(body)
            text = "\n".join(body)
            where = f"{_name(page)}:{start}"
            if language in COMMAND_LANGUAGES:
                block = Block(page, start, language, text, "\n".join(paragraph))
                commands = [text] if language == "python" else split_commands(text)
                block.commands = [Command(c, n + 1) for n, c in enumerate(commands)]
                for at, kind, spec in pending:
                    if kind == "docs-test":
                        _apply_test(block, spec, f"{_name(page)}:{at}")
                    else:
                        block.checks.append(_parse_check(spec, at, f"{_name(page)}:{at}"))
                blocks.append(block)
            elif pending:
                raise MarkupError(
                    f"{where}: docs markup above a ```{language} block (not a command)"
                )
            pending = []
            paragraph, blank = [], True
        else:
            if pending and line.strip():
                raise MarkupError(
                    f"{_name(page)}:{pending[0][0]}: docs markup not right above a fence"
                )
            visible.append(line)
            if line.strip():
                paragraph = [*paragraph, line] if not blank else [line]
            blank = not line.strip()
        i += 1
    if pending:
        raise MarkupError(f"{_name(page)}:{pending[0][0]}: docs markup after the last fence")
    return blocks, re.sub(r"<!--.*?-->", "", "\n".join(visible), flags=re.S)


def check_values(
    checks: list[Check], outputs: dict[int, str], measured: list[str] | None = None
) -> list[str]:
    """Each check against its match in the output of the block's commands (``outputs``: command
    number → what it printed, in block order): the list of what drifted or is missing. Every
    number read is added to ``measured`` (when given) as "check: printed N"."""
    problems: list[str] = []
    seen: dict[tuple[int | None, str], int] = {}
    for check in checks:
        if check.command is not None and check.command not in outputs:
            problems.append(f"{check.describe()}: command {check.command} did not run")
            continue
        output = "\n".join(outputs.values()) if check.command is None else outputs[check.command]
        matches = list(re.finditer(check.pattern, output))
        nth = seen.get((check.command, check.pattern), 0)
        seen[(check.command, check.pattern)] = nth + 1
        if nth >= len(matches):
            problems.append(
                f"{check.describe()}: not printed (match {nth + 1}, found {len(matches)})"
            )
            continue
        printed = matches[nth].group(1).replace(",", "")
        try:
            value = float(printed) * check.scale
        except ValueError:
            problems.append(f"{check.describe()}: printed {printed!r}, not a number")
            continue
        shown = printed if check.scale == 1 else f"{printed} (× {check.scale:g} = {value:g})"
        if measured is not None:
            measured.append(f"{check.describe()}: printed {shown}")
        if not check.verify(value):
            problems.append(f"{check.describe()}: printed {shown}")
    return problems
