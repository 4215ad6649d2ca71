"""deploy/compose, checked without Docker: the services and the files they mount, the
policy through `gateway check` with the demo key the entrypoint would make, and
Prometheus scraping the admin listener (`promtool check config` where installed)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.cli import main as gateway_main
from gateway.policy.load import load_model
from gateway.policy.model import Policy
from gateway.runtime.supervisor import EXIT_MARGIN
from gateway.tokens import keystore
from tests.deploy_paths import path_fields, reroot
from tests.metrics_parse import promtool

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
    return loaded


def _services() -> dict[str, Any]:
    services: dict[str, Any] = _compose()["services"]
    return services


def _binds(service: dict[str, Any]) -> dict[str, Path]:
    """Container path → host path of the service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out[target] = (COMPOSE_DIR / source).resolve()
    return out


def _named_volumes(service: dict[str, Any]) -> dict[str, str]:
    """Container path → volume name."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if not source.startswith((".", "/")):
            out[target] = source
    return out


def _config() -> tuple[str, Path]:
    """The gateway's --config in the container, and the file on this machine it is."""
    command = _services()["gateway"]["command"]
    config = command[command.index("--config") + 1]
    for target, source in _binds(_services()["gateway"]).items():
        if config.startswith(target + "/"):
            return config, source / config.removeprefix(target + "/")
    raise AssertionError(f"--config {config} is in no bind mount")


def _policy() -> Policy:
    return load_model(str(_config()[1]))


def test_the_services_and_their_files() -> None:
    compose = _compose()
    services = _services()
    assert set(services) == {"gateway", "upstream", "prometheus"}
    assert (COMPOSE_DIR / services["gateway"]["build"]["context"] / "Dockerfile").is_file()
    for name, service in services.items():
        for target, source in _binds(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
        for volume in _named_volumes(service).values():
            assert volume in compose.get("volumes", {}), f"{name}: volume {volume} is not declared"
        if "build" not in service:
            # Pinned: a version tag, never `latest` or none.
            assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", service["image"]), service["image"]
    for dependency in services["gateway"]["depends_on"] + services["prometheus"]["depends_on"]:
        assert dependency in services


def test_the_policy_passes_gateway_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gateway = _services()["gateway"]
    policy = yaml.safe_load(_config()[1].read_text())
    volumes = _named_volumes(gateway)
    root = tmp_path / "container"
    paths = path_fields(policy)
    assert paths
    for where, value in paths:
        assert value.startswith("/"), f"{where}: {value} is relative"
        # The token CLI writes beside the keys (ledger, revocations): a volume, not the
        # read-only root, and not the read-only policy mount.
        directory = value if where.endswith("signing_keys") else str(Path(value).parent)
        assert directory in volumes, f"{where}: {value} is not in a writable volume"
        # What the image's entrypoint does on first start (docker-entrypoint.sh).
        if where.endswith("signing_keys"):
            keystore.generate(root / value.lstrip("/"))
    rerooted = tmp_path / "gateway.yaml"
    rerooted.write_text(yaml.safe_dump(reroot(policy, root)))
    assert gateway_main(["check", "--config", str(rerooted)]) == 0, capsys.readouterr().err
    assert ": valid, " in capsys.readouterr().out


def test_the_routes_go_to_the_demo_upstream() -> None:
    for route in _policy().routes:
        url = urlsplit(str(route.upstream))
        assert url.hostname == "upstream", route.name
        assert url.port == 80, "traefik/whoami listens on 80"


def test_ports_the_healthcheck_and_the_grace_period_fit_the_policy() -> None:
    policy = _policy()
    gateway = _services()["gateway"]
    published = [p.rsplit(":", 1)[1] for p in gateway["ports"]]
    assert published == [str(policy.listen.port)]
    assert policy.admin.listen.host == "0.0.0.0", "Prometheus scrapes it from another container"
    # The image's HEALTHCHECK asks 127.0.0.1:9901 unless told otherwise.
    if "healthcheck" not in gateway and "GATEWAY_HEALTHCHECK_URL" not in gateway.get("environment", {}):
        assert "GATEWAY_HEALTHCHECK_URL=http://127.0.0.1:9901/healthz" in (ROOT / "Dockerfile").read_text()
        assert policy.admin.listen.port == 9901
    grace = gateway["stop_grace_period"]
    assert grace.endswith("s")
    assert float(grace[:-1]) > policy.server.shutdown_timeout + EXIT_MARGIN
    assert gateway["read_only"] is True


def test_prometheus_scrapes_the_admin_listener() -> None:
    prometheus = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    mounted = _binds(_services()["prometheus"])["/etc/prometheus/prometheus.yml"]
    assert mounted == COMPOSE_DIR / "prometheus.yml"
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "gateway"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for config in job["static_configs"] for t in config["targets"]]
    assert targets == [f"gateway:{_policy().admin.listen.port}"]


def test_promtool_accepts_the_prometheus_config() -> None:
    done = subprocess.run(
        [promtool(), "check", "config", str(COMPOSE_DIR / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
