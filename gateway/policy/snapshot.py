"""A policy as one load read it: its text, and the bytes of every key file it names.

The supervisor validates a policy once and its workers compile the same thing. The
text alone is not the same thing: each worker would read the key files again, and a
file changed or broken since (a reload of it refused) would give a worker other keys
than the others, or stop a restarted worker from starting at all, and with it the
whole gateway. So the supervisor sends the snapshot, and a worker compiles from it
without reading the policy's key files (each `FileKeys` then polls its file as usual).

Two snapshots are equal when a reload would change nothing: a file rewritten with the
same bytes (`touch`, a ConfigMap update of another key) is not a reload.
"""

from __future__ import annotations

import base64
import binascii
import errno
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.limits import MAX_KEY_FILE_BYTES, MAX_KEY_FILES_BYTES, MAX_POLICY_BYTES, read_bounded


@dataclass(frozen=True, slots=True)
class Snapshot:
    text: str
    # The directory the policy's relative paths were resolved against (the policy
    # file's real directory when it was read): a worker resolves against the same one,
    # even if a ConfigMap swapped `..data` since.
    base_dir: str
    # Path as compile read it -> the bytes it got: key files and secret files.
    files: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    # Replayed from the supervisor's copy, not read here.
    replayed: bool = False
    # Provider -> whether its revocation list existed when this was read. The lists are
    # never in the snapshot (an old list would un-revoke tokens): each start reads the
    # file, and one that existed then and is gone now stops it rather than revoke nothing.
    revocations: Mapping[str, bool] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        """For the control channel (JSON)."""
        return {
            "text": self.text,
            "base_dir": self.base_dir,
            "files": {path: base64.b64encode(data).decode("ascii") for path, data in self.files.items()},
            "revocations": dict(self.revocations),
        }

    @classmethod
    def from_wire(cls, message: Mapping[str, Any]) -> Snapshot:
        try:
            files = {str(path): base64.b64decode(data, validate=True) for path, data in message["files"].items()}
            revocations = {str(name): bool(existed) for name, existed in message["revocations"].items()}
            return cls(str(message["text"]), str(message["base_dir"]), files, True, revocations)
        except (KeyError, AttributeError, TypeError, binascii.Error) as exc:
            raise ValueError(f"not a policy snapshot ({type(exc).__name__})") from None

    def same(self, other: Snapshot) -> bool:
        return (self.text, self.base_dir, dict(self.files)) == (other.text, other.base_dir, dict(other.files))


def read_policy_text(filename: str) -> str:
    """The policy file's text (OSError, UnicodeDecodeError)."""
    return read_bounded(filename, MAX_POLICY_BYTES).decode("utf-8")


def base_dir_of(source: str) -> str:
    # Relative to the directory the policy file really is in (symlinks followed), as
    # before workers: a policy linked from elsewhere keeps finding its revocation list
    # beside it (a missing list revokes nothing, so a moved lookup would fail open). In
    # a Kubernetes ConfigMap that is the `..2026_…` directory of the current version;
    # the swap to the next one changes the policy file too, and the reload follows.
    return str(Path(source).resolve().parent)


class Reader:
    """How compile reads the files a policy names: from disk, bounded, keeping a copy;
    or, replaying a snapshot, from its copy only."""

    def __init__(self, replay: Snapshot | None = None) -> None:
        self._replay = replay
        self.files: dict[str, bytes] = {}
        self.revocations: dict[str, bool] = {}
        self._total = 0

    @property
    def replaying(self) -> bool:
        return self._replay is not None

    def read(self, path: str) -> bytes:
        if self._replay is not None:
            data = self._replay.files.get(path)
            if data is None:  # the same text names the same files: never, unless tampered
                raise OSError(errno.ENOENT, "not in the validated policy", path)
        else:
            data = read_bounded(path, MAX_KEY_FILE_BYTES)
            if path not in self.files:
                self._total += len(data)
            if self._total > MAX_KEY_FILES_BYTES:
                raise OSError(
                    errno.EFBIG, f"the key files named by the policy hold more than {MAX_KEY_FILES_BYTES >> 20} MiB"
                )
        self.files[path] = data
        return data

    def revocation_must_exist(self, provider: str, path: Path) -> bool:
        """Whether `provider`'s revocation list must exist now: a replayed snapshot says
        it has been seen (when the policy was validated, or since, by the supervisor).
        Notes whether it exists, for the snapshot this reader makes."""
        self.revocations[provider] = path.exists()
        return self._replay is not None and self._replay.revocations.get(provider, False)

    def snapshot(self, text: str, base_dir: str) -> Snapshot:
        return Snapshot(text, base_dir, dict(self.files), self._replay is not None, dict(self.revocations))
