"""What every ``twotower-*`` command does with a user error and with Ctrl-C outside training
(``twotower_train.cli.run_tool``): one line on stderr and a fixed exit code, no traceback."""

from __future__ import annotations

import pytest

from twotower_train import cli
from twotower_train.errors import UserError


def _raise(error: BaseException):
    def body():
        raise error

    return body


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    monkeypatch.delenv("RANK", raising=False)


@pytest.mark.parametrize(
    "error, line, code",
    [
        (UserError("bad\n  input"), "twotower-x: error: bad input", 2),
        (KeyboardInterrupt(), "twotower-x: interrupted (Ctrl-C)", 130),
        (KeyboardInterrupt("aborted (second Ctrl-C)"), "twotower-x: aborted (second Ctrl-C)", 130),
    ],
)
def test_one_line_and_the_exit_code(capsys, error, line, code):
    with pytest.raises(SystemExit) as stop:
        cli.run_tool("twotower-x", _raise(error))
    assert stop.value.code == code
    assert capsys.readouterr().err == line + "\n"


def test_debug_keeps_the_exception(monkeypatch):
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(KeyboardInterrupt):
        cli.run_tool("twotower-x", _raise(KeyboardInterrupt()))


@pytest.mark.parametrize(
    "message",
    [
        "`sequence_parallel` is set to `True`, but tensor model parallel size is 1. Disabling it.",
        "`torch.distributed.reduce_scatter_tensor` is deprecated. Please use ...",
        "Transformer Engine and Apex are not installed. Falling back to Torch optimizers.",
    ],
)
def test_known_library_notices_are_hidden_unless_debugging(message, monkeypatch):
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cli.quiet_startup()
        warnings.warn(message, UserWarning, stacklevel=1)
        assert not seen
        warnings.warn("something else", UserWarning, stacklevel=1)
        assert len(seen) == 1
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cli.quiet_startup()
        warnings.warn(message, UserWarning, stacklevel=1)
        assert len(seen) == 1
