"""What a pipeline shows (sheldon/core/output.py): progress bars only on a terminal, gone once done
in a quiet pipeline; a parallel trial's lines each start with the trial."""

from __future__ import annotations

import fcntl
import io
import os
import select
import struct
import sys
import termios

from sheldon.core.output import Prefixed, progress
from sheldon.core.vocabulary import QUIET_ENV


def test_every_line_starts_with_the_prefix_however_it_is_written():
    out = io.StringIO()
    stream = Prefixed(out, "[trial 2] ")
    for piece in ("one\ntw", "o\n\nthree", "\n"):
        stream.write(piece)
    assert out.getvalue() == "[trial 2] one\n[trial 2] two\n[trial 2] \n[trial 2] three\n"
    assert not stream.isatty()  # no progress bar amid the other trials' lines


def on_a_terminal(monkeypatch) -> tuple[int, io.TextIOWrapper]:
    """stderr on a new pseudo-terminal of 80 columns; and the end that reads what it shows."""
    main, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    stderr = open(terminal, "w")  # noqa: SIM115  (closed by the test)
    monkeypatch.setattr(sys, "stderr", stderr)
    return main, stderr


def shown_on(main: int) -> str:
    """All the terminal shows (a read returns what has arrived, maybe one write of several)."""
    shown = b""
    while select.select([main], [], [], 0.5)[0]:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # its other end is closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    return shown.decode()


def show_three_stages() -> bool:
    """A bar of three stages run to its end; whether it drew anything."""
    with progress(3, "splitting", "stage") as bar:
        drawn = not bar.disable
        bar.update(3)
    return drawn


def test_a_progress_bar_is_drawn_on_a_terminal_and_stays(monkeypatch):
    main, stderr = on_a_terminal(monkeypatch)
    assert show_three_stages()
    stderr.close()
    shown = shown_on(main)
    assert "splitting: 100%" in shown and shown.endswith("\n")


def test_a_quiet_pipelines_bar_goes_once_done(monkeypatch):
    monkeypatch.setenv(QUIET_ENV, "1")
    main, stderr = on_a_terminal(monkeypatch)
    assert show_three_stages()
    stderr.close()
    shown = shown_on(main)
    assert "splitting: " in shown and shown.endswith(" " * 40 + "\r")  # cleared, the line not ended


def test_no_progress_bar_in_a_log(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    assert not show_three_stages()
    assert log.getvalue() == ""
