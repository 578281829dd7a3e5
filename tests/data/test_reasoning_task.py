"""The reasoning task: deterministic, correct, held-out split disjoint, tokenizer round trip."""

from __future__ import annotations

import json
import random
import re

import pytest

from data_tools.reasoning_task import (
    TaskConfig,
    _random_problem,
    extract_answer,
    generate,
    is_heldout,
    write_task_files,
)
from twotower_train.data import DataError

STEP = re.compile(r" (\d+) ([+-]) (\d+) = (\d+)\.")


def test_deterministic_per_seed():
    config = TaskConfig()
    first = list(generate(200, "train", config, seed=7))
    assert first == list(generate(200, "train", config, seed=7))
    assert first != list(generate(200, "train", config, seed=8))
    # The held-out stream does not depend on how many training problems were drawn.
    assert list(generate(20, "heldout", config, 7)) == list(generate(30, "heldout", config, 7))[:20]


def test_answers_are_correct_against_python_arithmetic():
    config = TaskConfig(min_steps=1, max_steps=4, max_value=30)
    for problem in generate(500, "train", config, seed=1):
        expected = eval(problem.canonical)  # left-to-right + and -, as Python evaluates it
        assert problem.result == expected
        assert extract_answer(problem.answer) == expected
        steps = STEP.findall(problem.answer)
        assert len(steps) == len(problem.ops)
        value = problem.start
        for (a, op, b, total), (want_op, want_b) in zip(steps, problem.ops):
            assert (int(a), op, int(b)) == (value, want_op, want_b)
            assert int(total) == eval(f"{a}{op}{b}")
            assert 0 <= int(total) <= config.max_value
            value = int(total)
        # Every number of the story appears in the prompt, in order.
        numbers = [int(n) for n in re.findall(r"\d+", problem.prompt)]
        assert numbers == [problem.start] + [n for _, n in problem.ops]
        assert problem.prompt.endswith("\nAnswer:") and problem.answer.startswith(" ")


def test_heldout_split_is_disjoint_by_construction():
    config = TaskConfig(heldout_percent=10)
    train = list(generate(5000, "train", config, seed=0))
    heldout = list(generate(300, "heldout", config, seed=0))
    assert not any(is_heldout(p, config) for p in train)
    assert all(is_heldout(p, config) for p in heldout)
    held = {p.canonical for p in heldout}
    assert len(held) == len(heldout)  # distinct chains
    assert held.isdisjoint(p.canonical for p in train)
    # The split depends on the arithmetic only: rewording a problem never moves it.
    reworded = [p.__class__(p.start, p.ops, "Tom", "books", (0,) * len(p.ops)) for p in heldout]
    assert all(is_heldout(p, config) for p in reworded)
    # About heldout_percent of randomly drawn problems fall in the held-out buckets.
    rng = random.Random(0)
    drawn = [_random_problem(rng, config) for _ in range(4000)]
    assert 0.07 < sum(is_heldout(p, config) for p in drawn) / len(drawn) < 0.13


def test_prompt_answer_split_round_trips_through_the_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from data_tools.train_tokenizer import train_tokenizer

    problems = list(generate(300, "train", TaskConfig(), seed=0))
    tok_dir = train_tokenizer([p.prompt + p.answer for p in problems], 400, tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    for problem in list(generate(100, "heldout", TaskConfig(), seed=0)):
        prompt = tok(problem.prompt, add_special_tokens=False)["input_ids"]
        answer = tok(problem.answer, add_special_tokens=False)["input_ids"]
        whole = tok(problem.prompt + problem.answer, add_special_tokens=False)["input_ids"]
        assert prompt + answer == whole
        assert tok.decode(answer) == problem.answer
        assert (
            extract_answer(tok.decode(answer + [tok.eos_token_id], skip_special_tokens=True))
            == problem.result
        )


def test_write_task_files(tmp_path):
    train, heldout = tmp_path / "t.jsonl", tmp_path / "h.jsonl"
    write_task_files(train, heldout, 30, 10, TaskConfig(), seed=3)
    texts = [json.loads(line)["text"] for line in train.read_text().splitlines()]
    rows = [json.loads(line) for line in heldout.read_text().splitlines()]
    assert len(texts) == 30 and len(rows) == 10
    assert {"id", "prompt", "answer", "result", "canonical"} <= set(rows[0])
    assert all(extract_answer(r["answer"]) == r["result"] for r in rows)
    assert not {r["prompt"] + r["answer"] for r in rows} & set(texts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.jsonl", "t.jsonl"]  # no temp files


def test_bad_settings():
    with pytest.raises(DataError, match="min_steps <= max_steps"):
        TaskConfig(min_steps=3, max_steps=2)
    with pytest.raises(DataError, match="heldout_percent"):
        TaskConfig(heldout_percent=0)
    small = TaskConfig(min_steps=1, max_steps=1, max_start=2, max_amount=1, max_value=3)
    with pytest.raises(DataError, match="distinct heldout problems"):
        list(generate(50, "heldout", small, seed=0))
    with pytest.raises(DataError, match="split="):
        list(generate(1, "test", TaskConfig(), seed=0))


def test_cli_bad_settings_one_line_exit_2(tmp_path, capsys):
    from data_tools.reasoning_task import main

    assert main(["--out", str(tmp_path / "o"), "--min-steps", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "min_steps" in err
    assert not (tmp_path / "o").exists()
    assert main(["--out", str(tmp_path / "o"), "--train", "5", "--heldout", "2"]) == 0
    assert len((tmp_path / "o" / "task_heldout.jsonl").read_text().splitlines()) == 2
