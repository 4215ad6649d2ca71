"""`CompiledPolicy.snapshot`: what a load read (text, key files), replayed by workers;
and the bounds on what a load reads, which keep every snapshot under the control
channel's message limit."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from gateway.limits import MAX_KEY_FILE_BYTES, MAX_KEY_FILES_BYTES, MAX_POLICY_BYTES
from gateway.policy import ConfigError, load_policy, load_policy_text
from gateway.policy.snapshot import Snapshot
from gateway.runtime.control import Channel
from gateway.tokens import revocation
from gateway.tokens.files import write_atomic
from gateway.tokens.revocation import RevocationWatcher
from tests.factories import ec_key, write

ROUTES = """\
routes:
  - {name: ok, match: {prefix: /ok}, upstream: "http://127.0.0.1:81", auth: public}
"""


def provider(source: str, name: str = "files") -> str:
    return f"""\
  {name}:
    issuer: https://{name}.example
    audiences: [api]
    algorithms: [ES256]
    keys: [{source}]
"""


def test_a_snapshot_holds_the_text_and_every_key_file_read(tmp_path: Path) -> None:
    key = ec_key()
    write(tmp_path / "a.pem", key.public_pem())
    text = "providers:\n" + provider("{pem_file: a.pem}") + ROUTES
    write(tmp_path / "policy.yaml", text)
    snapshot = load_policy(str(tmp_path / "policy.yaml")).snapshot
    assert snapshot.text == text
    assert snapshot.base_dir == str(tmp_path.resolve())
    assert snapshot.files == {str(tmp_path.resolve() / "a.pem"): key.public_pem()}
    assert not snapshot.replayed


def test_a_replayed_snapshot_reads_no_key_file(tmp_path: Path) -> None:
    """A worker compiles the supervisor's copy: a key file broken or gone since does not
    change what it compiles."""
    key = ec_key()
    write(tmp_path / "a.pem", key.public_pem())
    text = "providers:\n" + provider("{pem_file: a.pem}") + ROUTES
    write(tmp_path / "policy.yaml", text)
    validated = load_policy(str(tmp_path / "policy.yaml")).snapshot
    (tmp_path / "a.pem").write_text("not a key\n")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_policy(str(tmp_path / "policy.yaml"))
    wire = Snapshot.from_wire(validated.to_wire())
    assert wire.same(validated)
    replayed = load_policy_text(wire.text, str(tmp_path / "policy.yaml"), replay=wire)
    assert replayed.snapshot.replayed
    assert replayed.snapshot.same(validated)
    (tmp_path / "a.pem").unlink()
    load_policy_text(wire.text, str(tmp_path / "policy.yaml"), replay=wire)
    # A text naming a file the snapshot does not hold is refused, never read from disk.
    other = text.replace("a.pem", "b.pem")
    write(tmp_path / "b.pem", key.public_pem())
    with pytest.raises(ConfigError, match="not in the validated policy"):
        load_policy_text(other, str(tmp_path / "policy.yaml"), replay=wire)


def test_snapshots_differ_when_a_byte_or_the_directory_differs(tmp_path: Path) -> None:
    base = Snapshot("text", "/a", {"/a/k": b"key"})
    assert base.same(Snapshot("text", "/a", {"/a/k": b"key"}, replayed=True))
    assert not base.same(Snapshot("text ", "/a", {"/a/k": b"key"}))
    assert not base.same(Snapshot("text", "/a", {"/a/k": b"kez"}))
    # A ConfigMap's next version lives in another directory: a reload, even if every
    # byte is the same (the old directory, and what the policy finds in it, goes away).
    assert not base.same(Snapshot("text", "/b", {"/a/k": b"key"}))


def test_a_policy_file_over_the_bound_is_refused_by_name(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(ROUTES + "#" * MAX_POLICY_BYTES)
    with pytest.raises(ConfigError) as err:
        load_policy(str(policy))
    assert (
        str(err.value) == f"{policy}: cannot read the policy file: the file is larger than 4 MiB (the most it may hold)"
    )


def test_a_key_file_over_the_bound_is_refused_at_its_field(tmp_path: Path) -> None:
    write(tmp_path / "big.pem", ec_key().public_pem() + b"\n" * MAX_KEY_FILE_BYTES)
    write(tmp_path / "policy.yaml", "providers:\n" + provider("{pem_file: big.pem}") + ROUTES)
    with pytest.raises(ConfigError) as err:
        load_policy(str(tmp_path / "policy.yaml"))
    assert f"policy.yaml:6: providers.files.keys[0].pem_file: cannot read {tmp_path.resolve()}/big.pem: " in str(
        err.value
    )
    assert "the file is larger than 1 MiB" in str(err.value)


def test_key_files_over_the_total_bound_are_refused(tmp_path: Path) -> None:
    """Each under its own bound, together over the snapshot's."""
    count = MAX_KEY_FILES_BYTES // MAX_KEY_FILE_BYTES + 1
    pem = ec_key().public_pem()
    names = []
    for i in range(count):
        write(tmp_path / f"k{i}.pem", pem + b"\n" * (MAX_KEY_FILE_BYTES - len(pem)))
        names.append(f"{{pem_file: k{i}.pem}}")
    write(tmp_path / "policy.yaml", "providers:\n" + provider(", ".join(names)) + ROUTES)
    with pytest.raises(ConfigError, match="the key files named by the policy hold more than 16 MiB"):
        load_policy(str(tmp_path / "policy.yaml"))


async def test_the_largest_snapshot_crosses_the_control_channel() -> None:
    """The bounds at load keep the largest snapshot (text of characters JSON escapes,
    key files at their total) under the channel's message limit."""
    text = "\x01" * MAX_POLICY_BYTES
    per_file = MAX_KEY_FILE_BYTES
    files = {f"/{'d' * 200}/{i}": b"\xff" * per_file for i in range(MAX_KEY_FILES_BYTES // per_file)}
    largest = Snapshot(text, "/" + "d" * 4000, files)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sender, receiver = await Channel.open(a), await Channel.open(b)
    got: list[Snapshot] = []
    try:
        serving = asyncio.ensure_future(receiver.serve(lambda m: got.append(Snapshot.from_wire(m["snapshot"]))))
        sender.send({"op": "prepare", "snapshot": largest.to_wire()})
        sender.close()
        await asyncio.wait_for(serving, 60)
    finally:
        sender.close()
        receiver.close()
    assert len(got) == 1
    assert got[0].same(largest)


def test_a_snapshot_never_prints_its_files() -> None:
    secret = b"s3cret-hmac-key-" * 4
    snapshot = Snapshot("text", "/a", {"/a/hmac": secret})
    assert secret.decode() not in repr(snapshot)
    assert "s3cret" not in repr(Snapshot.from_wire(snapshot.to_wire()))


def test_a_revocation_written_as_its_watcher_starts_is_read_by_the_first_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher stamps the file before reading it: a revocation landing between the
    two (found by review: it was taken as read, and never loaded) is a change."""
    path = tmp_path / "revoked.json"
    path.write_text('{"revoked": []}')
    real_read = revocation.read

    def read_then_revoke(p: Path) -> list[dict[str, Any]]:
        entries = real_read(p)
        write_atomic(p, b'{"revoked": [{"jti": "t-9"}]}\n', 0o644)  # as `gateway tokens revoke`
        return entries

    monkeypatch.setattr(revocation, "read", read_then_revoke)
    watcher = RevocationWatcher("corp", path)
    monkeypatch.setattr(revocation, "read", real_read)
    assert watcher.revoked == frozenset()

    async def poll() -> None:
        watcher.start(lambda ok, n: None)
        await asyncio.sleep(revocation.POLL_SECONDS * 2.5)
        await watcher.stop()

    asyncio.run(poll())
    assert watcher.revoked == {"t-9"}
