"""`gateway run --log-format json`: the process's own log lines (supervisor and workers)
are one JSON object each, as the access log's can be."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.procs import gateway_cmd


def run_until_serving(tmp_path: Path, *args: str) -> list[str]:
    """Start the gateway, stop it with SIGTERM once a worker serves; its stderr lines."""
    config = tmp_path / "gateway.yaml"
    subprocess.run(gateway_cmd("keys", "generate", "--dir", str(tmp_path / "keys")), check=True, capture_output=True)
    # A revocation file not there yet: each worker logs that (an INFO line of its own).
    config.write_text(
        "listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\nserver: {workers: 2}\n"
        "providers:\n  t: {issuer: https://t, audiences: [a], algorithms: [EdDSA], keys: [{jwks_file: keys/jwks.json}],"
        " revocation_file: keys/revoked.json}\n"
        "routes:\n  - {name: x, match: {prefix: /x}, upstream: 'http://127.0.0.1:9', auth: {any_of: [t]}}\n"
    )
    err = tmp_path / "stderr"
    with err.open("wb") as sink:
        proc = subprocess.Popen(
            gateway_cmd("run", "--config", str(config), *args), stdout=subprocess.DEVNULL, stderr=sink
        )
        try:
            deadline = time.monotonic() + 20
            while err.read_text().count(" serving (pid ") < 2 and '"worker 1 serving' not in err.read_text():
                assert proc.poll() is None, err.read_text()
                assert time.monotonic() < deadline, err.read_text()
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return err.read_text().splitlines()


@pytest.mark.timeout(60)
def test_json_log_lines_are_json_objects_from_every_process(tmp_path: Path) -> None:
    lines = run_until_serving(tmp_path, "--log-format", "json")
    records = [json.loads(line) for line in lines]  # every line, or this raises
    assert all(set(r) >= {"time", "level", "logger", "message"} for r in records)
    assert all(r["time"].endswith("Z") and r["level"] in {"debug", "info", "warning", "error"} for r in records)
    messages = [r["message"] for r in records]
    assert any(m.startswith("gateway listening on http://127.0.0.1:") for m in messages)
    assert any(m == "stopped" for m in messages)
    # Workers log JSON too, and say which worker they are.
    assert {r["worker"] for r in records if "does not exist yet" in r["message"] and "worker" in r} == {"0", "1"}


@pytest.mark.timeout(60)
def test_text_stays_the_default(tmp_path: Path) -> None:
    lines = run_until_serving(tmp_path)
    assert any(" INFO gateway.runtime: gateway listening on http://127.0.0.1:" in line for line in lines)
    assert not any(line.startswith("{") for line in lines)
    assert any("[worker 1]: provider t: revocation file" in line for line in lines)
