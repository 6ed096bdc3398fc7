"""The CLI's last line of defence: file-system errors end in one line, exit 2."""

from __future__ import annotations

import sys
import types

import pytest

from e5jax import cli


@pytest.mark.parametrize("error", [IsADirectoryError(21, "Is a directory", "out"),
                                   NotADirectoryError(20, "Not a directory", "afile/x"),
                                   PermissionError(13, "Permission denied", "/root/x"),
                                   FileNotFoundError(2, "No such file or directory", "nope")])
def test_os_errors_end_in_one_line_naming_the_path(monkeypatch, capsys, error):
    module = types.ModuleType("fake_command")
    module.add_arguments = lambda parser: None

    def run(args):
        raise error

    module.run = run
    monkeypatch.setitem(sys.modules, "fake_command", module)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("fake_command", "raises an OSError"))
    code = cli.main(["fake"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("e5jax fake: error: ") and repr(error.filename) in err[0]


def test_other_errors_are_not_swallowed(monkeypatch):
    """A bug (not bad input) still surfaces with its traceback."""
    module = types.ModuleType("fake_command")
    module.add_arguments = lambda parser: None
    module.run = lambda args: 1 / 0
    monkeypatch.setitem(sys.modules, "fake_command", module)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("fake_command", "has a bug"))
    with pytest.raises(ZeroDivisionError):
        cli.main(["fake"])
