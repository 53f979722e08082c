"""The trust tests' one check: bad input ended in one line (on stderr), never a traceback."""

from __future__ import annotations


def one_line(capsys, *phrases: str, error: bool = True, short: bool = False) -> str:
    """stderr so far: one line, no traceback, holding every phrase; `error`: it is `error: …`;
    `short`: under 400 characters (a 5001-digit value is not echoed whole)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err[:2000]
    assert not error or err.startswith("error: "), err[:2000]
    assert not short or len(err) < 400, err[:2000]
    for phrase in phrases:
        assert phrase in err, err[:2000]
    return err
