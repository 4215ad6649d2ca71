"""The cell store: append, grow, and be read by another process, even after a SIGKILL."""

from __future__ import annotations

import mmap
import signal
from pathlib import Path

import pytest

from gateway.obs.cells import CellStore, read_cells
from tests.procs import python_child as child


def test_cells_are_appended_and_read_back_from_the_file(tmp_path: Path) -> None:
    store = CellStore(tmp_path / "w")
    a = store.add(("a",))
    block = store.add(("b0", "b1", "b2"), (1.0, 2.0, 3.0))
    store.values[a] += 1.0
    store.values[block + 2] += 0.5
    expected = {"a": 1.0, "b0": 1.0, "b1": 2.0, "b2": 3.5}
    assert store.cells() == expected
    assert read_cells(tmp_path / "w") == expected
    store.close()


def test_a_store_never_overwrites_a_file_or_takes_odd_keys(tmp_path: Path) -> None:
    (tmp_path / "w").write_bytes(b"")
    with pytest.raises(FileExistsError):
        CellStore(tmp_path / "w")
    assert read_cells(tmp_path / "w") == {}  # empty: a writer that has not begun
    store = CellStore()
    for keys in ((), ("a\0b",)):
        with pytest.raises(ValueError, match="NUL"):
            store.add(keys)
    with pytest.raises(ValueError, match="page size"):
        CellStore(capacity=100)
    store.close()


@pytest.mark.parametrize("named", [True, False])
def test_growth_across_several_remaps_keeps_every_view_live(tmp_path: Path, named: bool) -> None:
    store = CellStore(tmp_path / "w" if named else None, capacity=mmap.PAGESIZE)
    bound = []  # (view, index) as a hot-path object holds them: views from before each growth
    for n in range(3000):
        index = store.add((f"series-{n:05}",))
        bound.append((store.values, index))
    assert len({id(view) for view, _ in bound}) >= 5  # 4 KiB to 256 KiB: at least five maps
    for n, (view, index) in enumerate(bound):
        view[index] += n  # through the view each cell was bound with, however old
    expected = {f"series-{n:05}": float(n) for n in range(3000)}
    assert store.cells() == expected
    if named:
        assert read_cells(tmp_path / "w") == expected
    store.close()


def test_a_reader_in_another_process_sees_whole_entries_while_the_writer_appends(tmp_path: Path) -> None:
    path = tmp_path / "w"
    # The writer: 4 000 series, each added then counted up to its number modulo 7,
    # growing the file from one page. Before each batch of 400 it waits for a line and
    # says it starts, so that the reader reads once while each batch is being written
    # (in lock-step: lines sent ahead would let a busy machine run batches unread).
    code = """
        import mmap, sys
        from gateway.obs.cells import CellStore
        store = CellStore(sys.argv[1], capacity=mmap.PAGESIZE)
        for n in range(4000):
            if n % 400 == 0:
                sys.stdin.readline()
                print("batch", flush=True)
            index = store.add((f"series-{n:05}",))
            for _ in range(n % 7):
                store.values[index] += 1.0
        """
    snapshots = []
    with child(code, str(path)) as writer:
        assert writer.stdin is not None
        assert writer.stdout is not None
        for _ in range(10):
            writer.stdin.write("go\n")
            writer.stdin.flush()
            assert writer.stdout.readline() == "batch\n"
            snapshots.append(read_cells(path))
        writer.stdin.close()
        assert writer.wait(timeout=30) == 0
    final = read_cells(path)
    assert final == {f"series-{n:05}": float(n % 7) for n in range(4000)}
    assert len(snapshots) == 10
    previous: dict[str, float] = {}
    for cells in snapshots:
        # A prefix of the series in order, none half-written, no value going back.
        assert list(cells) == list(final)[: len(cells)]
        assert all(0 <= value <= final[key] for key, value in cells.items())
        assert all(cells[key] >= value for key, value in previous.items())
        previous = cells


def test_a_writer_killed_mid_way_loses_nothing_it_counted(tmp_path: Path) -> None:
    path = tmp_path / "w"
    code = """
        import mmap, sys
        from gateway.obs.cells import CellStore
        store = CellStore(sys.argv[1], capacity=mmap.PAGESIZE)
        blocks = [store.add((f"route-{r}-hits", f"route-{r}-sum")) for r in range(200)]
        count = 0
        while True:
            for index in blocks:
                store.values[index] += 1.0
                store.values[index + 1] += 0.25
            count += 1
            if count % 50 == 0:
                print(count, flush=True)  # at least this many rounds are counted
        """
    with child(code, str(path)) as writer:
        assert writer.stdout is not None
        for _ in range(5):
            seen = int(writer.stdout.readline())
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=30) == -signal.SIGKILL
    cells = read_cells(path)
    assert len(cells) == 400
    rounds = cells["route-0-hits"]
    assert rounds >= seen  # everything it had counted when it said so, and since
    # Killed inside a round: the routes before the kill have one round more.
    assert {cells[f"route-{r}-hits"] for r in range(200)} <= {rounds, rounds - 1}
    # The sum is written after the count: one kill may fall between the two.
    assert all(cells[f"route-{r}-sum"] * 4 - cells[f"route-{r}-hits"] in (0, -1) for r in range(200))
