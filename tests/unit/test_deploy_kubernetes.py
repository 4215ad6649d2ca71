"""deploy/kubernetes: every resource against the Kubernetes schemas (offline, bundled by
kubernetes-validate), and the policy in its ConfigMap through the gateway's own
`check`, with the files the pod would mount; then what the two must agree on."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from gateway.cli import main as gateway_main
from gateway.duration import parse_duration
from gateway.policy.load import load_model
from gateway.runtime.supervisor import EXIT_MARGIN
from gateway.tokens import keystore
from tests.deploy_paths import path_fields, reroot

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes"
POLICY_FILE = "gateway.yaml"
# An older minor still run by managed clusters (everything used here was GA long before
# it), and the newest the installed kubernetes-validate knows.
K8S_VERSIONS = ("1.31", latest_version())

Resource = dict[str, Any]


def _yaml_docs(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _kustomization(base: Path = BASE) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((base / "kustomization.yaml").read_text())
    return loaded


def _generated_files(generator: dict[str, Any], base: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for spec in generator.get("files", []):
        key, sep, source = spec.partition("=")
        if not sep:
            key, source = Path(spec).name, spec
        files[key] = (base / source).read_bytes()
    return files


def build(base: Path) -> list[Resource]:
    """What `kustomize build` emits for this base: its `resources` files and its generators.
    Only the fields the base uses are understood; any other fails, so none is skipped."""
    k = _kustomization(base)
    known = {"apiVersion", "kind", "resources", "generatorOptions", "configMapGenerator", "secretGenerator"}
    assert set(k) <= known, f"kustomization.yaml: fields this resolver does not build: {sorted(set(k) - known)}"
    assert k["generatorOptions"] == {"disableNameSuffixHash": True}
    out: list[Resource] = []
    for name in k["resources"]:
        out.extend(_yaml_docs(base / name))
    for gen in k.get("configMapGenerator", []):
        assert set(gen) <= {"name", "files"}, gen
        data = {key: value.decode() for key, value in _generated_files(gen, base).items()}
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    for gen in k.get("secretGenerator", []):
        assert set(gen) <= {"name", "files", "type"}, gen
        encoded = {key: base64.b64encode(value).decode() for key, value in _generated_files(gen, base).items()}
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": gen["name"]},
                "type": gen.get("type", "Opaque"),
                "data": encoded,
            }
        )
    return out


def _one(resources: list[Resource], kind: str, name: str | None = None) -> Resource:
    found = [r for r in resources if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _mount(root: Path, mount_path: str, files: dict[str, bytes]) -> None:
    """Lay out files as the kubelet does for a ConfigMap or Secret volume: a timestamped
    directory, a `..data` symlink to it, and one symlink per key through `..data`."""
    where = root / mount_path.lstrip("/")
    version = where / "..2026_01_01_00_00_00.000000001"
    version.mkdir(parents=True)
    for key, data in files.items():
        (version / key).write_bytes(data)
        (where / key).symlink_to(Path("..data") / key)
    (where / "..data").symlink_to(version.name)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A copy of the base with the Secret's files made, as an operator makes them: an
    API-token key (`gateway keys generate`) and an HMAC secret, for what the policy names
    under the Secret's mount. A Secret file the policy does not name is not made, and the
    build then fails."""
    copy = tmp_path / "base"
    shutil.copytree(
        BASE, copy, ignore=lambda d, names: [n for n in names if Path(d).name == "keys" and n != ".gitignore"]
    )
    policy = yaml.safe_load((copy / "policy" / POLICY_FILE).read_text())
    keys_dir = copy / "keys"
    for where, value in path_fields(policy):
        name = Path(value).name
        if where.endswith("signing_keys") and not (keys_dir / keystore.JWKS_FILE).exists():
            keystore.generate(keys_dir)
        elif where.endswith("hmac_secret.file"):
            (keys_dir / name).write_bytes(base64.b64encode(b"s" * 64))
    return copy


@pytest.fixture
def resources(base: Path) -> list[Resource]:
    return build(base)


def _deployment(resources: list[Resource]) -> tuple[Resource, Resource]:
    deployment = _one(resources, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return deployment, containers[0]


def _policy_text(resources: list[Resource], container: Resource) -> tuple[str, str]:
    """The policy the container runs (its --config) and that path, from the ConfigMap mounted there."""
    args = container.get("command", []) + container["args"]
    config = args[args.index("--config") + 1]
    spec = resources_volume(resources, container, str(Path(config).parent))
    return spec["data"][Path(config).name], config


def resources_volume(resources: list[Resource], container: Resource, mount_path: str) -> Resource:
    """The ConfigMap or Secret mounted at `mount_path`."""
    pod = _one(resources, "Deployment")["spec"]["template"]["spec"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == mount_path)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    if "configMap" in volume:
        return _one(resources, "ConfigMap", volume["configMap"]["name"])
    return _one(resources, "Secret", volume["secret"]["secretName"])


def _volume_files(resource: Resource) -> dict[str, bytes]:
    if resource["kind"] == "Secret":
        return {k: base64.b64decode(v) for k, v in resource["data"].items()}
    return {k: v.encode() for k, v in resource["data"].items()}


# -- the manifests ---------------------------------------------------------------------


def test_the_kustomization_lists_every_manifest() -> None:
    k = _kustomization()
    manifests = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(k["resources"]) == sorted(manifests)
    for gen in k["configMapGenerator"]:
        for spec in gen["files"]:
            assert (BASE / spec.partition("=")[2]).is_file(), spec


def test_the_secret_files_are_never_committed() -> None:
    """keys/ holds the operator's private keys: git ignores everything in it."""
    for gen in _kustomization()["secretGenerator"]:
        for spec in gen["files"]:
            source = spec.partition("=")[2]
            assert source.startswith("keys/"), spec
    assert (BASE / "keys" / ".gitignore").read_text().split("\n")[-3:] == ["*", "!.gitignore", ""]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_resource_is_valid_kubernetes(resources: list[Resource], version: str) -> None:
    kinds = sorted(r["kind"] for r in resources)
    assert kinds == sorted(
        ["ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret", "Service"]
    )
    for resource in resources:
        # strict: an unknown field (a typo, or a field of another version) is an error.
        kubernetes_validate.validate(resource, version, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")
def test_kustomize_builds_what_the_resolver_builds(base: Path, resources: list[Resource]) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(base)], capture_output=True, text=True, check=True, timeout=30)
    built = [doc for doc in yaml.safe_load_all(out.stdout) if doc is not None]

    def key(r: Resource) -> tuple[str, str]:
        return r["kind"], r["metadata"]["name"]

    def decoded(r: Resource) -> Resource:
        # kustomize folds long base64 lines.
        return {**r, "data": _volume_files(r)} if r["kind"] == "Secret" else r

    assert [decoded(r) for r in sorted(built, key=key)] == [decoded(r) for r in sorted(resources, key=key)]


# -- the policy in the ConfigMap -------------------------------------------------------


def test_the_policy_passes_gateway_check_with_the_files_the_pod_mounts(
    resources: list[Resource], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, container = _deployment(resources)
    text, config = _policy_text(resources, container)
    root = tmp_path / "pod"
    for mount in container["volumeMounts"]:
        assert "subPath" not in mount, f"{mount['name']}: a subPath mount is never updated"
        if mount["mountPath"] != "/dev/shm":
            _mount(root, mount["mountPath"], _volume_files(resources_volume(resources, container, mount["mountPath"])))
    policy = yaml.safe_load(text)
    paths = path_fields(policy)
    assert paths, "the policy names no key or revocation file"
    for where, value in paths:
        # Relative paths are resolved in the ConfigMap's `..2026_…` directory, beside the policy.
        assert value.startswith("/"), f"{where}: {value} is relative"
        if not where.endswith(".ledger"):  # the token CLI's, not the pods'
            assert (root / value.lstrip("/")).exists(), f"{where}: {value} is in no volume the pod mounts"
    checked = root / config.lstrip("/")
    assert checked.read_text() == text  # the mounted copy is the ConfigMap's
    rerooted = tmp_path / POLICY_FILE
    rerooted.write_text(yaml.safe_dump(reroot(policy, root)))
    assert "/etc/" not in rerooted.read_text().replace(f"{root}/etc/", ""), "a path the rerooting missed"
    assert gateway_main(["check", "--config", str(rerooted)]) == 0, capsys.readouterr().err
    assert ": valid, " in capsys.readouterr().out


def test_the_revocation_list_is_one_the_gateway_reads(resources: list[Resource]) -> None:
    data = _one(resources, "ConfigMap", "gateway-revocations")["data"]
    assert json.loads(data["revoked.json"]) == {"revoked": []}


# -- what the manifests and the policy agree on ----------------------------------------


def _port(container: Resource, ref: int | str) -> int:
    if isinstance(ref, int):
        return ref
    ports: dict[str, int] = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ref in ports, f"no container port named {ref!r}"
    return ports[ref]


def _policy(resources: list[Resource], tmp_path: Path) -> Any:
    _, container = _deployment(resources)
    text, _ = _policy_text(resources, container)
    (tmp_path / POLICY_FILE).write_text(text)
    return load_model(str(tmp_path / POLICY_FILE))


def test_ports_and_probes_match_the_policy(resources: list[Resource], tmp_path: Path) -> None:
    policy = _policy(resources, tmp_path)
    _, container = _deployment(resources)
    assert policy.listen.host in ("0.0.0.0", "::"), "the public listener must take the pod's IP"
    assert policy.admin.listen.host in ("0.0.0.0", "::"), "probes and Prometheus come from outside the pod"
    assert _port(container, "http") == policy.listen.port
    assert _port(container, "admin") == policy.admin.listen.port
    live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert live["path"] == "/healthz"
    assert ready["path"] == "/readyz"
    assert _port(container, live["port"]) == _port(container, ready["port"]) == policy.admin.listen.port
    service = _one(resources, "Service")
    assert [_port(container, p["targetPort"]) for p in service["spec"]["ports"]] == [policy.listen.port]
    template = _one(resources, "Deployment")["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(policy.admin.listen.port)


def test_the_grace_period_covers_the_drain(resources: list[Resource], tmp_path: Path) -> None:
    policy = _policy(resources, tmp_path)
    deployment, container = _deployment(resources)
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = parse_duration(command[1] if command[1][-1].isalpha() else command[1] + "s")
    # SIGTERM comes after the preStop hook; a worker still busy EXIT_MARGIN past
    # shutdown_timeout is killed; the grace period counts from the hook's start.
    assert grace > pre_stop + policy.server.shutdown_timeout + EXIT_MARGIN


def test_workers_auto_has_a_whole_cpu_limit(resources: list[Resource], tmp_path: Path) -> None:
    policy = _policy(resources, tmp_path)
    _, container = _deployment(resources)
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert {"cpu", "memory"} <= set(limits)
    assert {"cpu", "memory"} <= set(requests)
    cpu = str(limits["cpu"])
    if policy.server.workers == "auto":
        # `auto` rounds the quota up: a fractional limit gives workers that get throttled.
        assert cpu.isdigit(), cpu
    else:
        # More workers than CPUs would share the quota, throttled (CFS).
        assert int(policy.server.workers) <= (int(cpu) if cpu.isdigit() else int(cpu.removesuffix("m")) / 1000)


def test_the_pod_is_locked_down(resources: list[Resource]) -> None:
    deployment, container = _deployment(resources)
    pod = deployment["spec"]["template"]["spec"]
    security = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    # The image's user, so that what the image owns (and the Secret's group) fit.
    uid = pod["securityContext"]["runAsUser"]
    assert f"--uid {uid} " in (ROOT / "Dockerfile").read_text()
    # With a read-only root, the supervisor's metric cells need a writable /dev/shm
    # (gateway/runtime/supervisor.py), in memory.
    shm = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
    volume = next(v for v in pod["volumes"] if v["name"] == shm["name"])
    assert volume["emptyDir"]["medium"] == "Memory"
    assert "sizeLimit" in volume["emptyDir"]
    for mount in container["volumeMounts"]:
        assert bool(mount.get("readOnly")) is (mount["mountPath"] != "/dev/shm"), mount


def test_the_hpa_pdb_and_service_select_the_deployment(resources: list[Resource]) -> None:
    deployment, _ = _deployment(resources)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert _one(resources, "Service")["spec"]["selector"].items() <= labels.items()
    assert _one(resources, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = _one(resources, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert hpa["minReplicas"] >= 2
    # The HPA owns the replica count; an apply must not reset it.
    assert "replicas" not in deployment["spec"]
