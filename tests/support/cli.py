"""What a failed realm-ext command must show (tests/test_cli.py, tests/model/test_pull.py)."""

from __future__ import annotations

from click.testing import Result


def error_line(r: Result, code: int) -> str:
    """The one error line of a command that failed as it should: exit `code`, no
    exception escaping (CliRunner swallows a traceback: r.exception shows it), and on
    stderr nothing but notes, the usage lines of a usage error, and that line."""
    assert r.exit_code == code, r.output
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    lines = [line for line in r.stderr.splitlines() if line and not line.startswith("note: ")]
    if code == 2:  # click's usage error: "Usage: ...", "Try ...", then the error
        assert lines[0].startswith("Usage: ") and lines[1].startswith("Try "), lines
        lines = lines[2:]
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    return lines[0]
