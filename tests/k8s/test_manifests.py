"""The Kubernetes port in k8s/: the base (k8s/base, one broker over SQLite) and the cluster
overlay (k8s/overlays/cluster, broker replicas over Valkey), each rendered offline
(deployments.build, checked against `kubectl kustomize` where kubectl is installed), valid
against the Kubernetes API schemas (kubernetes-validate), and in agreement with the compose
files and the Dockerfiles, which stay the source of truth for images, ports, the deployment's
settings and health checks. (The settings' defaults are the settings classes' own:
test_settings_defaults.py.)"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from broker.settings import BrokerSettings
from client.settings import ClientSettings
from k8s.deployments import Unsupported, build, identity, load_compose
from server.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUSTOMIZATIONS = {"base": K8S / "base", "cluster": K8S / "overlays" / "cluster"}
# The compose files each kustomization ports, merged in this order.
COMPOSE_FILES = {
    "base": [ROOT / "docker-compose.yml"],
    "cluster": [ROOT / "docker-compose.yml", ROOT / "docker-compose.cluster.yml"],
}
SERVICES = ("broker", "server", "client")
# What each kustomization runs, by name: the services, and in cluster mode Valkey.
WORKLOADS = {
    "base": dict.fromkeys(SERVICES, "Deployment"),
    "cluster": {**dict.fromkeys(SERVICES, "Deployment"), "valkey": "StatefulSet"},
}
GROKER_PODS = [(k, name) for k in KUSTOMIZATIONS for name in SERVICES]
PODS = [(k, name) for k in KUSTOMIZATIONS for name in WORKLOADS[k]]
# The users the pods run as: the groker images' own (10001), the valkey image's valkey user.
POD_USERS = {**dict.fromkeys(SERVICES, 10001), "valkey": 999}
# Where callbacks may point is the deployment's own network: different by design.
DEPLOYMENT_SPECIFIC = {"GROKER_ALLOWED_NETWORKS"}
# Compose's cluster mode reaches the broker through its load balancer (lb); Kubernetes through
# the broker Service, which spreads requests over the ready replicas itself: the URLs' default.
THROUGH_COMPOSE_LB = {"GROKER_BROKER_URL"}

# ${NAME:-default}, ${NAME-default} or ${NAME}, as compose interpolates them.
COMPOSE_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}")
COMPOSE_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)")
SECONDS_PER_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


def ids(cases: list[tuple[str, str]]) -> list[str]:
    return ["-".join(case) for case in cases]


# --- reading the sources --------------------------------------------------------------------


@cache
def compose(kustomization: str) -> dict[str, dict[str, Any]]:
    """The compose services as compose merges the kustomization's compose files: each key of
    a later file's service replaces the earlier one's, but environment merges by variable.
    (The files are read with the `<<: *service` merge keys resolved, so each service carries
    x-service's stop_grace_period.)"""
    services: dict[str, dict[str, Any]] = {}
    for path in COMPOSE_FILES[kustomization]:
        for name, definition in load_compose(path)["services"].items():
            service = services.setdefault(name, {})
            environment = {
                **(service.get("environment") or {}),
                **(definition.get("environment") or {}),
            }
            service.update(definition)
            service["environment"] = environment
    return services


def compose_service(name: str, kustomization: str = "base") -> dict[str, Any]:
    return compose(kustomization)[name]


def interpolated(value: object) -> str:
    """A compose value as compose runs it with nothing overridden."""
    return COMPOSE_VARIABLE.sub(lambda m: m["default"] or "", str(value))


def compose_environment(name: str, kustomization: str = "base") -> dict[str, str]:
    """The values the service's environment gives, as compose runs it with nothing overridden.
    Names without a value (passed through from the shell when set there) are left out."""
    environment = compose_service(name, kustomization)["environment"]
    assert isinstance(environment, dict), f"{name}: expected environment as a mapping"
    return {key: interpolated(value) for key, value in environment.items() if value is not None}


def compose_seconds(duration: str | int) -> float:
    """A compose duration ("30s", "1m30s", "500ms") in seconds."""
    text = str(duration)
    parts = COMPOSE_DURATION.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(number) * SECONDS_PER_UNIT[unit] for number, unit in parts)


@cache
def dockerfile_instructions(name: str) -> tuple[tuple[str, str], ...]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = (ROOT / "services" / name / "Dockerfile").read_text().splitlines()
    logical = " ".join(
        line[:-1] if line.endswith("\\") else line + "\n"
        for line in lines
        if not line.lstrip().startswith("#")
    )
    instructions = []
    for line in logical.splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return tuple(instructions)


def dockerfile_env(name: str) -> dict[str, str]:
    env = {}
    for keyword, arguments in dockerfile_instructions(name):
        if keyword == "ENV":
            for pair in shlex.split(arguments):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def dockerfile_arguments(name: str, keyword: str) -> str:
    found = [arguments for kw, arguments in dockerfile_instructions(name) if kw == keyword]
    assert len(found) == 1, f"{name}/Dockerfile: expected one {keyword}, found {len(found)}"
    return found[0]


@cache
def rendered(kustomization: str) -> tuple[dict[str, Any], ...]:
    return tuple(build(KUSTOMIZATIONS[kustomization]))


def resources(kind: str, kustomization: str = "base") -> list[dict[str, Any]]:
    return [document for document in rendered(kustomization) if document["kind"] == kind]


def resource(kind: str, name: str, kustomization: str = "base") -> dict[str, Any]:
    found = [d for d in resources(kind, kustomization) if document_name(d) == name]
    assert len(found) == 1, f"{kustomization}: expected one {kind} {name}"
    return found[0]


def document_name(document: dict[str, Any]) -> str:
    return document["metadata"]["name"]


def workload(name: str, kustomization: str = "base") -> dict[str, Any]:
    return resource(WORKLOADS[kustomization][name], name, kustomization)


def pod_spec(name: str, kustomization: str = "base") -> dict[str, Any]:
    return workload(name, kustomization)["spec"]["template"]["spec"]


def pod_labels(name: str, kustomization: str = "base") -> dict[str, str]:
    return workload(name, kustomization)["spec"]["template"]["metadata"]["labels"]


def container(name: str, kustomization: str = "base") -> dict[str, Any]:
    containers = pod_spec(name, kustomization)["containers"]
    assert [c["name"] for c in containers] == [name]
    return containers[0]


def container_env(name: str, kustomization: str = "base") -> dict[str, dict[str, Any]]:
    entries = container(name, kustomization).get("env", [])
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), f"{name}: an env var is set twice: {names}"
    return {entry["name"]: entry for entry in entries}


def env_value(name: str, variable: str, kustomization: str = "base") -> str:
    value = container_env(name, kustomization)[variable]["value"]
    assert isinstance(value, str)
    return value


# --- 1. rendered offline, and valid Kubernetes ----------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renders_as_kubectl_kustomize_does(kustomization: str) -> None:
    # The renderer is this test's own; kustomize itself is the judge where it is installed.
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the renderer is not compared with kustomize")
    result = subprocess.run(
        ["kubectl", "kustomize", str(KUSTOMIZATIONS[kustomization])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    expected = {identity(d): d for d in yaml.safe_load_all(result.stdout) if d}
    assert {identity(d): d for d in rendered(kustomization)} == expected


def test_the_renderer_refuses_what_it_does_not_handle(tmp_path: Path) -> None:
    (tmp_path / "pod.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "pod"},
                "spec": {"containers": [{"name": "c", "args": ["a"], "env": []}]},
            }
        )
    )

    def kustomization(**fields: Any) -> None:
        document = {"kind": "Kustomization", "resources": ["pod.yaml"], **fields}
        (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(document))

    def patch(container: dict[str, Any]) -> None:
        document = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pod"}}
        document["spec"] = {"containers": [{"name": "c", **container}]}
        (tmp_path / "patch.yaml").write_text(yaml.safe_dump(document))
        kustomization(patches=[{"path": "patch.yaml"}])

    kustomization()
    assert len(build(tmp_path)) == 1
    for refused in (
        lambda: kustomization(images=[{"name": "x", "newTag": "1"}]),
        lambda: kustomization(patches=[{"patch": "{}", "target": {"kind": "Pod"}}]),
        lambda: kustomization(labels=[{"pairs": {"a": "b"}, "includeSelectors": True}]),
        lambda: patch({"args": ["b"]}),  # a list whose merge this renderer does not know
        lambda: patch({"env": [{"name": "X", "$patch": "delete"}]}),  # nothing to delete
        lambda: patch({"$patch": "replace"}),
    ):
        refused()
        with pytest.raises(Unsupported):
            build(tmp_path)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_rendered_objects_validate_strictly(kustomization: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kustomization}.yaml"
    path.write_text(yaml.safe_dump_all(rendered(kustomization)))
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # kubernetes-validate exits 0 with only a WARN for a kind or apiVersion it has no schema
    # for (a typo included), so every object must be reported as passed.
    assert not re.search(r"^(WARN|ERROR|FATAL)", output, re.MULTILINE), output
    passed = set(re.findall(r"passed for resource (\S+) against", output))
    expected = {f"{d['kind'].lower()}/{document_name(d)}" for d in rendered(kustomization)}
    assert passed == expected, output


def test_base_lists_every_manifest_and_labels_without_selectors() -> None:
    base = KUSTOMIZATIONS["base"]
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"] == [f"{name}.yaml" for name in SERVICES]
    on_disk = {p.name for p in base.glob("*.y*ml")} - {"kustomization.yaml"}
    assert on_disk == set(kustomization["resources"])
    assert "commonLabels" not in kustomization  # it rewrites immutable selectors
    [labels] = kustomization["labels"]
    assert labels["pairs"] == {"app.kubernetes.io/part-of": "groker"}
    assert labels["includeSelectors"] is False


def test_cluster_overlay_is_the_base_with_files_of_its_own() -> None:
    overlay = KUSTOMIZATIONS["cluster"]
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    base = (overlay / kustomization["resources"][0]).resolve()
    assert base == KUSTOMIZATIONS["base"]
    used = kustomization["resources"][1:] + [patch["path"] for patch in kustomization["patches"]]
    on_disk = {p.name for p in overlay.glob("*.y*ml")} - {"kustomization.yaml"}
    assert sorted(used) == sorted(on_disk)
    # The base's labels, on the overlay's own objects too.
    base_labels = yaml.safe_load((base / "kustomization.yaml").read_text())["labels"]
    assert kustomization["labels"] == base_labels


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_each_kustomization_runs_its_workloads(kustomization: str) -> None:
    kinds = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}
    found = {document_name(d): d["kind"] for d in rendered(kustomization) if d["kind"] in kinds}
    assert found == WORKLOADS[kustomization]


# --- 2. the manifests agree with compose and the Dockerfiles --------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_compose_service_is_ported(kustomization: str) -> None:
    # secrets-init is compose's way to make the tokens; in Kubernetes they are a Secret. lb,
    # cluster mode's load balancer: in Kubernetes the broker Service spreads requests over the
    # ready replicas itself.
    ported = set(compose(kustomization)) - {"secrets-init", "lb"}
    assert ported == set(WORKLOADS[kustomization])


@pytest.mark.parametrize(("kustomization", "name"), PODS, ids=ids(PODS))
def test_image_is_the_one_compose_runs(kustomization: str, name: str) -> None:
    image = interpolated(compose_service(name, kustomization)["image"])
    assert container(name, kustomization)["image"] == image
    assert container(name, kustomization)["imagePullPolicy"] == "IfNotPresent"


@pytest.mark.parametrize(("kustomization", "name"), GROKER_PODS, ids=ids(GROKER_PODS))
def test_port_is_the_one_the_dockerfile_sets(kustomization: str, name: str) -> None:
    port = int(dockerfile_env(name)["PORT"])
    assert int(dockerfile_arguments(name, "EXPOSE")) == port
    assert container(name, kustomization)["ports"] == [{"name": "http", "containerPort": port}]
    assert env_value(name, "PORT", kustomization) == str(port)
    service = resource("Service", name, kustomization)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": port, "targetPort": "http"}]


@pytest.mark.parametrize(("kustomization", "name"), GROKER_PODS, ids=ids(GROKER_PODS))
def test_every_setting_compose_gives_a_value_is_set_in_k8s_too(
    kustomization: str, name: str
) -> None:
    # Compose gives values only where the deployment differs from the settings' defaults
    # (test_settings_defaults.py); Kubernetes must differ in the same way.
    expected = compose_environment(name, kustomization)
    assert expected, f"compose sets no environment for {name}"
    expected = {k: v for k, v in expected.items() if k not in THROUGH_COMPOSE_LB}
    env = container_env(name, kustomization)
    assert set(expected) <= set(env), f"missing in k8s: {sorted(set(expected) - set(env))}"
    expected = {k: v for k, v in expected.items() if k not in DEPLOYMENT_SPECIFIC}
    assert {key: env_value(name, key, kustomization) for key in expected} == expected


@pytest.mark.parametrize(("kustomization", "name"), GROKER_PODS, ids=ids(GROKER_PODS))
def test_probes_use_the_health_endpoints_the_image_checks(kustomization: str, name: str) -> None:
    spec = container(name, kustomization)
    readiness, liveness = spec["readinessProbe"], spec["livenessProbe"]
    assert readiness["httpGet"] == {"path": "/readyz", "port": "http"}
    assert liveness["httpGet"] == {"path": "/healthz", "port": "http"}
    check_probe_timing(readiness, liveness)
    healthcheck = dockerfile_arguments(name, "HEALTHCHECK")
    [path] = re.findall(r"http://[^/\s]+(/[\w/-]*)", healthcheck)
    assert path in {"/readyz", "/healthz"}


def check_probe_timing(readiness: dict[str, Any], liveness: dict[str, Any]) -> None:
    for probe in (readiness, liveness):
        assert probe["periodSeconds"] > probe["timeoutSeconds"] > 0
        assert probe["failureThreshold"] >= 2
    # Liveness gives up later than readiness: a busy pod is taken out of rotation, not killed.
    assert (
        liveness["periodSeconds"] * liveness["failureThreshold"]
        > readiness["periodSeconds"] * readiness["failureThreshold"]
    )


@pytest.mark.parametrize(("kustomization", "name"), GROKER_PODS, ids=ids(GROKER_PODS))
def test_grace_period_matches_compose_and_gunicorn(kustomization: str, name: str) -> None:
    grace = pod_spec(name, kustomization)["terminationGracePeriodSeconds"]
    stop_grace_period = compose_service(name, kustomization)["stop_grace_period"]
    assert grace == compose_seconds(stop_grace_period)
    assert env_value(name, "GUNICORN_GRACEFUL_TIMEOUT", kustomization) == str(grace)
    # ... and gunicorn's own default, used wherever the variable is not set.
    defaults = (ROOT / "libs" / "groker_common" / "gunicorn_defaults.py").read_text()
    assert f'"GUNICORN_GRACEFUL_TIMEOUT", "{grace}"' in defaults


# --- 3. structure ---------------------------------------------------------------------------


def test_base_broker_is_one_pod_that_never_overlaps_its_successor() -> None:
    spec = workload("broker")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert not resources("PodDisruptionBudget")  # one pod: a budget would block every drain


def test_base_broker_keeps_its_store_on_a_persistent_volume() -> None:
    claim = resource("PersistentVolumeClaim", "broker-data")["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    assert claim["resources"]["requests"]["storage"] == "1Gi"
    volumes = {v["name"]: v for v in pod_spec("broker")["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container("broker")["volumeMounts"]}
    assert volumes[mounts["/data"]]["persistentVolumeClaim"] == {"claimName": "broker-data"}
    assert "GROKER_STORE" not in container_env("broker")  # SQLite, the default
    assert env_value("broker", "GROKER_DB_PATH") == "/data/groker.db"
    assert dockerfile_env("broker")["GROKER_DB_PATH"] == "/data/groker.db"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_default_urls_reach_the_services(kustomization: str) -> None:
    # The manifests leave these to the settings' defaults, which must name the Services.
    for name, settings_class in (("server", ServerSettings), ("client", ClientSettings)):
        assert "GROKER_BROKER_URL" not in container_env(name, kustomization)
        broker_url = settings_class.model_fields["broker_url"].default
        assert broker_url == service_url("broker", kustomization)
    assert "GROKER_CALLBACK_URL" not in container_env("server", kustomization)
    callback_url = ServerSettings.model_fields["callback_url"].default
    assert callback_url == service_url("server", kustomization) + "/notifications"


def service_url(name: str, kustomization: str) -> str:
    [port] = resource("Service", name, kustomization)["spec"]["ports"]
    return f"http://{name}:{port['port']}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_client_replica_subscribes_with_its_own_pod_ip(kustomization: str) -> None:
    assert workload("client", kustomization)["spec"]["replicas"] == 3
    entries = container("client", kustomization)["env"]
    names = [entry["name"] for entry in entries]
    pod_ip, callback = names.index("POD_IP"), names.index("GROKER_CALLBACK_URL")
    # $(POD_IP) expands only if POD_IP is defined earlier in the list.
    assert pod_ip < callback
    assert entries[pod_ip]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    port = container("client", kustomization)["ports"][0]["containerPort"]
    assert entries[callback]["value"] == f"http://$(POD_IP):{port}/messages"


@pytest.mark.parametrize(("kustomization", "name"), PODS, ids=ids(PODS))
def test_workload_and_service_select_their_own_pods(kustomization: str, name: str) -> None:
    labels = pod_labels(name, kustomization)
    selector = workload(name, kustomization)["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert resource("Service", name, kustomization)["spec"]["selector"].items() <= labels.items()
    # No other workload's pods match.
    for other in set(WORKLOADS[kustomization]) - {name}:
        assert not selector.items() <= pod_labels(other, kustomization).items()


@pytest.mark.parametrize(("kustomization", "name"), PODS, ids=ids(PODS))
def test_runs_as_non_root_with_a_read_only_root_filesystem(kustomization: str, name: str) -> None:
    pod = pod_spec(name, kustomization)["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == pod["runAsGroup"] == pod["fsGroup"] == POD_USERS[name]
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(name, kustomization)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in security and "runAsUser" not in security
    if name in SERVICES:
        # gunicorn needs a writable /tmp for its worker heartbeat files.
        volumes = {v["name"]: v for v in pod_spec(name, kustomization)["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container(name, kustomization)["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize(("kustomization", "name"), PODS, ids=ids(PODS))
def test_requests_and_limits_are_set(kustomization: str, name: str) -> None:
    resources = container(name, kustomization)["resources"]
    for bound in ("requests", "limits"):
        assert set(resources[bound]) == {"cpu", "memory"}, bound
    for kind in ("cpu", "memory"):
        request, limit = resources["requests"][kind], resources["limits"][kind]
        assert 0 < quantity(request) <= quantity(limit), f"{kind}: {request} > {limit}"


# --- 4. cluster mode ------------------------------------------------------------------------


def test_cluster_broker_is_replicas_over_valkey() -> None:
    spec = workload("broker", "cluster")["spec"]
    assert spec["replicas"] >= 2
    env = container_env("broker", "cluster")
    assert env_value("broker", "GROKER_STORE", "cluster") == "valkey"
    # GROKER_VALKEY_URL keeps its default (test_default_valkey_url_reaches_the_valkey_service)
    # and nothing is left of SQLite: no path, no volume, no claim.
    assert "GROKER_VALKEY_URL" not in env and "GROKER_DB_PATH" not in env
    assert not resources("PersistentVolumeClaim", "cluster")
    assert not [v for v in pod_spec("broker", "cluster")["volumes"] if "persistentVolumeClaim" in v]
    mounts = {m["mountPath"] for m in container("broker", "cluster")["volumeMounts"]}
    assert mounts == {"/tmp", "/secrets"}
    # Everything else is the base's broker.
    base_pod, pod = pod_spec("broker"), pod_spec("broker", "cluster")
    for key in ("terminationGracePeriodSeconds", "securityContext"):
        assert pod[key] == base_pod[key], key
    for key in ("image", "ports", "livenessProbe", "resources", "securityContext"):
        assert container("broker", "cluster")[key] == container("broker")[key], key


def test_cluster_broker_rollout_keeps_every_replica_available() -> None:
    # Every replica is ready, a new one as soon as it runs (a standby): the rollout starts one
    # before it stops an old one, and the old owner hands the lease over when it stops.
    spec = workload("broker", "cluster")["spec"]
    assert spec["strategy"]["type"] == "RollingUpdate"
    rolling = spec["strategy"]["rollingUpdate"]
    replicas = spec["replicas"]
    assert scaled(rolling["maxUnavailable"], replicas, round_up=False) == 0
    assert scaled(rolling["maxSurge"], replicas, round_up=True) >= 1


def scaled(value: int | str, replicas: int, *, round_up: bool) -> int:
    """maxUnavailable (rounded down) or maxSurge (rounded up) as a number of pods."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"(\d+)%", value)
    assert match, f"not a number or a percentage: {value!r}"
    share = int(match[1]) * replicas
    return -(-share // 100) if round_up else share // 100


def test_cluster_broker_readiness_is_probed_within_part_of_a_lease() -> None:
    readiness = container("broker", "cluster")["readinessProbe"]
    assert readiness["httpGet"] == {"path": "/readyz", "port": "http"}
    lease = BrokerSettings.model_fields["lease_seconds"].default
    assert readiness["periodSeconds"] <= lease / 2


def test_cluster_broker_disruption_budget() -> None:
    # Every replica is ready, so a budget counts them all: one evicted at a time, the owner
    # included (a graceful stop hands the lease over; broker-pdb.yaml says why).
    [budget] = resources("PodDisruptionBudget", "cluster")
    spec = budget["spec"]
    assert document_name(budget) == "broker"
    assert spec["maxUnavailable"] == 1 and "minAvailable" not in spec
    assert spec["unhealthyPodEvictionPolicy"] == "IfHealthyBudget"
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= pod_labels("broker", "cluster").items()
    for other in set(WORKLOADS["cluster"]) - {"broker"}:
        assert not selector.items() <= pod_labels(other, "cluster").items()


def test_valkey_runs_as_compose_runs_it() -> None:
    compose_valkey = compose_service("valkey", "cluster")
    valkey = container("valkey", "cluster")
    # Compose's command and, as Kubernetes sets a memory limit, --maxmemory under it: without
    # one, noeviction never refuses a write and Valkey grows until it is killed at the limit.
    arguments = shlex.split(compose_valkey["command"])
    assert valkey["args"][: len(arguments)] == arguments
    extra = valkey["args"][len(arguments) :]
    assert extra[0] == "--maxmemory" and len(extra) == 2
    assert valkey_bytes(extra[1]) <= quantity(valkey["resources"]["limits"]["memory"]) / 2
    # Ready as compose's healthcheck is healthy; alive while it answers at all.
    kind, test = compose_valkey["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    readiness, liveness = valkey["readinessProbe"], valkey["livenessProbe"]
    assert readiness["exec"]["command"] == ["sh", "-c", test]
    assert liveness["exec"]["command"] == ["valkey-cli", "ping"]
    check_probe_timing(readiness, liveness)


def valkey_bytes(value: str) -> int:
    """A Valkey memory size ("512mb", "1gb", "100000") in bytes."""
    match = re.fullmatch(r"(\d+)(kb|mb|gb)?", value.lower())
    assert match, f"not a Valkey memory size: {value!r}"
    return int(match[1]) * {None: 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}[match[2]]


def test_valkey_keeps_its_data_on_a_claim_of_its_own() -> None:
    spec = workload("valkey", "cluster")["spec"]
    assert spec["replicas"] == 1  # no replication: a second pod would be a second Valkey
    [claim] = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    arguments = container("valkey", "cluster")["args"]
    data_dir = arguments[arguments.index("--dir") + 1]
    mounts = {m["mountPath"]: m["name"] for m in container("valkey", "cluster")["volumeMounts"]}
    assert mounts[data_dir] == claim["metadata"]["name"]
    assert "volumes" not in spec["template"]["spec"]  # the claim template is the volume
    # An AOF of up to twice the data between rewrites, and the rewritten one beside it.
    maxmemory = valkey_bytes(arguments[arguments.index("--maxmemory") + 1])
    assert quantity(claim["spec"]["resources"]["requests"]["storage"]) >= 4 * maxmemory


def test_default_valkey_url_reaches_the_valkey_service() -> None:
    url = urlsplit(BrokerSettings.model_fields["valkey_url"].default)
    service = resource("Service", url.hostname or "", "cluster")
    [port] = service["spec"]["ports"]
    assert url.scheme == "redis" and url.port == port["port"]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"  # headless or not
    assert service["spec"]["selector"].items() <= pod_labels("valkey", "cluster").items()
    [container_port] = container("valkey", "cluster")["ports"]
    assert port["targetPort"] == container_port["name"]
    assert container_port["containerPort"] == port["port"] == 6379
    assert workload("valkey", "cluster")["spec"]["serviceName"] == document_name(service)


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("250m", "1", "256Mi", "1G") as a number."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", str(value))
    assert match and match[2] in QUANTITY_SUFFIXES, f"not a quantity: {value!r}"
    return float(match[1]) * QUANTITY_SUFFIXES[match[2]]


QUANTITY_SUFFIXES = {
    "": 1.0,
    "m": 1e-3,
    **{s: 1000.0**i for i, s in enumerate(("k", "M", "G", "T"), start=1)},
    **{s: 1024.0**i for i, s in enumerate(("Ki", "Mi", "Gi", "Ti"), start=1)},
}
