"""The access log's writer thread: what waits for a slow stdout is bounded."""

from __future__ import annotations

import io

from gateway.obs.access import LineWriter


def test_pending_lines_are_bounded_in_characters_not_only_in_count() -> None:
    out = io.StringIO()
    # The thread never flushes on its own here: everything waits, as behind a stuck pipe.
    writer = LineWriter(out, interval=3600, max_pending_chars=100_000)
    for _ in range(1000):
        writer.write("x" * 10_000)  # the size of a line full of hostile, escaped fields
    assert writer.dropped == 990
    writer.close()
    assert out.getvalue().count("\n") == 10
    assert writer.dropped == 990


def test_room_comes_back_once_lines_are_written() -> None:
    out = io.StringIO()
    writer = LineWriter(out, interval=3600, max_pending_chars=25)
    for _ in range(3):
        writer.write("0123456789")
    assert writer.dropped == 1
    writer.flush()
    writer.write("0123456789")
    writer.write("0123456789")
    assert writer.dropped == 1
    writer.close()
    assert out.getvalue() == "0123456789\n" * 4
