"""The container image, checked without a Docker daemon: the Dockerfile's user, health
check and volume, the entrypoint's demo keys, and what .dockerignore keeps out of the
build context."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PEM_PRIVATE = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, (NAME, arguments), continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        name, _, args = (pending + line).strip().partition(" ")
        out.append((name.upper(), args.strip()))
        pending = ""
    return out


def _all(name: str) -> list[str]:
    return [args for instr, args in instructions() if instr == name]


# -- .dockerignore, as Docker reads it (moby/patternmatcher) ---------------------------


def _regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("^" + "".join(out) + "$")


def _patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        cleaned = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        patterns.append((negate, _regex(cleaned)))
    return patterns


def excluded(path: str) -> bool:
    """Whether Docker leaves `path` (relative, with `/`) out of the context: the last
    pattern matching it or one of its parent directories decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negate, regex in _patterns():
        if any(regex.match(prefix) for prefix in prefixes):
            result = not negate
    return result


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".venv-3.13/lib/python3.13/site-packages/x.py",
        ".git/HEAD",
        ".git/objects/ab/cdef",
        "demo-keys/jwks.json",
        "demo-keys/6cPneMtlPzkYJX3zP3TEiF6TFuD7tNl8QKYpn4Jrk4g.key",
        "keys/abc.key",
        "deploy/kubernetes/keys/jwks.json",
        "deploy/kubernetes/keys/billing-hmac.secret",
        "tls/tls.key",
        "server.pem",
        "gateway/keys/private.key",
        "gateway/tls/cert.pem",
        "gateway/__pycache__/cli.cpython-312.pyc",
        ".mypy_cache/3.11/x.json",
        ".pytest_cache/v/cache/lastfailed",
        ".ruff_cache/content",
        "gateway.egg-info/PKG-INFO",
        "bench/results.json",
        "tests/certs.py",
        ".env",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert excluded(path)


def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    sources = []
    for args in _all("COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        if "--from=" not in args:
            sources.extend(words[:-1])
    assert sources
    for source in sources:
        files = (
            [source] if (ROOT / source).is_file() else [str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py")]
        )
        assert files, source
        for file in files:
            if "__pycache__" not in file:
                assert not excluded(file), file


def test_the_build_context_holds_no_private_key() -> None:
    """Walk this checkout as Docker would send it: what is let in has no private key."""
    sent: list[str] = []
    for directory, dirs, files in os.walk(ROOT):
        rel = Path(directory).relative_to(ROOT)
        # Pruned: every top-level directory but gateway/ is excluded whole.
        dirs[:] = [d for d in dirs if not excluded((rel / d).as_posix()) or (rel / d).as_posix() == "gateway"]
        sent.extend((rel / f).as_posix() for f in files if not excluded((rel / f).as_posix()))
    assert "gateway/cli.py" in sent
    assert all(p.startswith("gateway/") or "/" not in p for p in sent), sent
    for path in sent:
        assert not PEM_PRIVATE.search((ROOT / path).read_bytes()), path


# -- the Dockerfile --------------------------------------------------------------------


def test_the_image_runs_as_its_unprivileged_user() -> None:
    users = _all("USER")
    assert users
    uid = users[-1]
    assert uid.isdigit(), "a numeric uid: Kubernetes' runAsNonRoot can check it"
    assert int(uid) != 0
    assert any(f"--uid {uid} " in args for args in _all("RUN"))


def test_the_demo_writes_only_to_a_volume() -> None:
    """With --read-only, the entrypoint's demo key directory must be a volume."""
    volumes = [v for args in _all("VOLUME") for v in json.loads(args)]
    written = re.findall(r"keys generate --dir (\S+)", (ROOT / "docker-entrypoint.sh").read_text())
    assert written
    assert set(written) <= set(volumes)


def _healthcheck() -> list[str]:
    (args,) = _all("HEALTHCHECK")
    options, _, command = args.partition("CMD ")
    assert "--interval=" in options
    assert "--timeout=" in options
    argv: list[str] = json.loads(command)  # exec form: no shell needed in the image
    return argv


def test_the_healthcheck_needs_no_curl_and_probes_the_admin_listener() -> None:
    argv = _healthcheck()
    assert argv[0] == "python"
    assert not {"curl", "wget"} & set(" ".join(argv).split())
    env = dict(arg.split("=", 1) for args in _all("ENV") for arg in shlex.split(args))
    url = env["GATEWAY_HEALTHCHECK_URL"]
    cmd = json.loads(_all("CMD")[-1])
    admin = cmd[cmd.index("--admin-listen") + 1]
    assert url == f"http://127.0.0.1:{admin.rpartition(':')[2]}/healthz"


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def admin() -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_the_healthcheck_command_works(admin: HTTPServer, status: int, healthy: bool) -> None:
    _Health.status = status
    port = admin.server_address[1]
    env = {
        "PATH": os.environ.get("PATH", ""),
        "GATEWAY_HEALTHCHECK_URL": f"http://127.0.0.1:{port}/healthz",
        # A proxy from the environment is not used for the local admin listener.
        "http_proxy": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
    }
    done = subprocess.run([sys.executable, *_healthcheck()[1:]], env=env, capture_output=True, timeout=20)
    # Docker: 0 healthy, 1 unhealthy.
    assert done.returncode == (0 if healthy else 1), done.stderr


def test_the_healthcheck_fails_when_nothing_listens(admin: HTTPServer) -> None:
    port = admin.server_address[1]
    admin.shutdown()
    admin.server_close()
    env = {"PATH": os.environ.get("PATH", ""), "GATEWAY_HEALTHCHECK_URL": f"http://127.0.0.1:{port}/healthz"}
    done = subprocess.run([sys.executable, *_healthcheck()[1:]], env=env, capture_output=True, timeout=20)
    assert done.returncode == 1


# -- the entrypoint --------------------------------------------------------------------

DEMO_KEYS = "/etc/gateway/demo-keys"


@pytest.fixture
def fake_gateway(tmp_path: Path) -> Path:
    """A `gateway` on PATH that records its arguments, one call a line."""
    log = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "gateway"
    script.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(log))}\n')
    script.chmod(0o755)
    return log


def _entrypoint(log: Path, *args: str) -> list[str]:
    env = {"PATH": f"{log.parent / 'bin'}:/usr/bin:/bin"}
    subprocess.run(["sh", str(ROOT / "docker-entrypoint.sh"), *args], env=env, check=True, timeout=20)
    return log.read_text().splitlines()


@pytest.mark.skipif(Path(DEMO_KEYS, "jwks.json").exists(), reason=f"{DEMO_KEYS} exists on this machine")
@pytest.mark.parametrize("form", ["--config {}", "--config={}"])
def test_the_entrypoint_makes_demo_keys_for_a_policy_that_names_them(
    fake_gateway: Path, tmp_path: Path, form: str
) -> None:
    policy = tmp_path / "demo.yaml"
    policy.write_text("keys:\n  - jwks_file: demo-keys/jwks.json\n")
    args = ["run", *form.format(policy).split(" "), "--demo-upstream"]
    assert _entrypoint(fake_gateway, *args) == [f"keys generate --dir {DEMO_KEYS}", " ".join(args)]


def test_the_entrypoint_leaves_another_policy_alone(fake_gateway: Path, tmp_path: Path) -> None:
    policy = tmp_path / "mine.yaml"
    policy.write_text("keys:\n  - jwks_file: /etc/gateway/keys/jwks.json\n")
    assert _entrypoint(fake_gateway, "run", "--config", str(policy)) == [f"run --config {policy}"]
    assert _entrypoint(fake_gateway, "check", "--config", str(policy))[-1] == f"check --config {policy}"
