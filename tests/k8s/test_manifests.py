"""The Kubernetes port in k8s/: valid against the Kubernetes API schemas (offline, with
kubernetes-validate), and in agreement with docker-compose.yml and the Dockerfiles, which
stay the source of truth for images, ports, the deployment's settings and health checks.
(The settings' defaults are the settings classes' own: test_settings_defaults.py.)"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from client.settings import ClientSettings
from server.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
SERVICES = ("broker", "server", "client")
DEPLOYMENT_SPECIFIC = {"GROKER_ALLOWED_NETWORKS"}
MANIFESTS = [K8S / f"{name}.yaml" for name in SERVICES]

# ${NAME:-default}, ${NAME-default} or ${NAME}, as compose interpolates them.
COMPOSE_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}")
COMPOSE_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)")
SECONDS_PER_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


# --- reading the sources --------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    # safe_load resolves the `<<: *service` merge keys, so each service carries x-service's
    # stop_grace_period.
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def compose_service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def compose_environment(name: str) -> dict[str, str]:
    """The values the service's environment gives, as compose runs it with nothing overridden.
    Names without a value (passed through from the shell when set there) are left out."""
    environment = compose_service(name).get("environment") or {}
    assert isinstance(environment, dict), f"{name}: expected environment as a mapping"
    return {
        key: COMPOSE_VARIABLE.sub(lambda m: m["default"] or "", str(value))
        for key, value in environment.items()
        if value is not None
    }


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
def manifest(name: str) -> tuple[dict[str, Any], ...]:
    documents = yaml.safe_load_all((K8S / f"{name}.yaml").read_text())
    return tuple(document for document in documents if document)


def resource(name: str, kind: str, resource_name: str | None = None) -> dict[str, Any]:
    resource_name = resource_name or name
    found = [
        document
        for document in manifest(name)
        if document["kind"] == kind and document["metadata"]["name"] == resource_name
    ]
    assert len(found) == 1, f"k8s/{name}.yaml: expected one {kind} {resource_name}"
    return found[0]


def pod_spec(name: str) -> dict[str, Any]:
    return resource(name, "Deployment")["spec"]["template"]["spec"]


def container(name: str) -> dict[str, Any]:
    containers = pod_spec(name)["containers"]
    assert [c["name"] for c in containers] == [name]
    return containers[0]


def container_env(name: str) -> dict[str, dict[str, Any]]:
    entries = container(name).get("env", [])
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), f"{name}: an env var is set twice: {names}"
    return {entry["name"]: entry for entry in entries}


def env_value(name: str, variable: str) -> str:
    value = container_env(name)[variable]["value"]
    assert isinstance(value, str)
    return value


# --- 1. valid Kubernetes, offline -----------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_strictly(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # kubernetes-validate exits 0 with only a WARN for a kind or apiVersion it has no schema
    # for (a typo included), so every document of the file must be reported as passed.
    assert not re.search(r"^(WARN|ERROR|FATAL)", output, re.MULTILINE), output
    passed = set(re.findall(r"passed for resource (\S+) against", output))
    expected = {f"{d['kind'].lower()}/{d['metadata']['name']}" for d in manifest(path.stem)}
    assert passed == expected, output


def test_kustomization_lists_every_manifest_and_labels_without_selectors() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"] == [path.name for path in MANIFESTS]
    on_disk = {p.name for p in K8S.glob("*.y*ml")} - {"kustomization.yaml"}
    assert on_disk == {path.name for path in MANIFESTS}
    assert "commonLabels" not in kustomization  # it rewrites immutable selectors
    [labels] = kustomization["labels"]
    assert labels["pairs"] == {"app.kubernetes.io/part-of": "groker"}
    assert labels["includeSelectors"] is False


# --- 2. the manifests agree with compose and the Dockerfiles --------------------------------


def test_every_compose_service_is_ported() -> None:
    # secrets-init is compose's way to make the tokens; in Kubernetes they are a Secret.
    assert set(compose()["services"]) - {"secrets-init"} == set(SERVICES)


@pytest.mark.parametrize("name", SERVICES)
def test_image_is_the_one_compose_builds(name: str) -> None:
    assert container(name)["image"] == compose_service(name)["image"]
    assert container(name)["imagePullPolicy"] == "IfNotPresent"


@pytest.mark.parametrize("name", SERVICES)
def test_port_is_the_one_the_dockerfile_sets(name: str) -> None:
    port = int(dockerfile_env(name)["PORT"])
    assert int(dockerfile_arguments(name, "EXPOSE")) == port
    assert container(name)["ports"] == [{"name": "http", "containerPort": port}]
    assert env_value(name, "PORT") == str(port)
    service = resource(name, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": port, "targetPort": "http"}]


@pytest.mark.parametrize("name", SERVICES)
def test_every_setting_compose_gives_a_value_is_set_in_k8s_too(name: str) -> None:
    # Compose gives values only where the deployment differs from the settings' defaults
    # (test_settings_defaults.py); Kubernetes must differ in the same way.
    expected = compose_environment(name)
    assert expected, f"compose sets no environment for {name}"
    env = container_env(name)
    assert set(expected) <= set(env), f"missing in k8s: {sorted(set(expected) - set(env))}"
    # Where callbacks may point is the deployment's own network: different by design.
    expected = {k: v for k, v in expected.items() if k not in DEPLOYMENT_SPECIFIC}
    assert {key: env_value(name, key) for key in expected} == expected


@pytest.mark.parametrize("name", SERVICES)
def test_probes_use_the_health_endpoints_the_image_checks(name: str) -> None:
    spec = container(name)
    readiness, liveness = spec["readinessProbe"], spec["livenessProbe"]
    assert readiness["httpGet"] == {"path": "/readyz", "port": "http"}
    assert liveness["httpGet"] == {"path": "/healthz", "port": "http"}
    for probe in (readiness, liveness):
        assert probe["periodSeconds"] > probe["timeoutSeconds"] > 0
        assert probe["failureThreshold"] >= 2
    # Liveness gives up later than readiness: a busy pod is taken out of rotation, not killed.
    assert (
        liveness["periodSeconds"] * liveness["failureThreshold"]
        > readiness["periodSeconds"] * readiness["failureThreshold"]
    )
    healthcheck = dockerfile_arguments(name, "HEALTHCHECK")
    [path] = re.findall(r"http://[^/\s]+(/[\w/-]*)", healthcheck)
    assert path in {"/readyz", "/healthz"}


@pytest.mark.parametrize("name", SERVICES)
def test_grace_period_matches_compose_and_gunicorn(name: str) -> None:
    grace = pod_spec(name)["terminationGracePeriodSeconds"]
    assert grace == compose_seconds(compose_service(name)["stop_grace_period"])
    assert env_value(name, "GUNICORN_GRACEFUL_TIMEOUT") == str(grace)
    # ... and gunicorn's own default, used wherever the variable is not set.
    defaults = (ROOT / "libs" / "groker_common" / "gunicorn_defaults.py").read_text()
    assert f'"GUNICORN_GRACEFUL_TIMEOUT", "{grace}"' in defaults


# --- 3. structure ---------------------------------------------------------------------------


def test_broker_is_one_pod_that_never_overlaps_its_successor() -> None:
    spec = resource("broker", "Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


def test_broker_keeps_its_store_on_a_persistent_volume() -> None:
    claim = resource("broker", "PersistentVolumeClaim", "broker-data")["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    assert claim["resources"]["requests"]["storage"] == "1Gi"
    volumes = {v["name"]: v for v in pod_spec("broker")["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container("broker")["volumeMounts"]}
    assert volumes[mounts["/data"]]["persistentVolumeClaim"] == {"claimName": "broker-data"}
    assert env_value("broker", "GROKER_DB_PATH") == "/data/groker.db"
    assert dockerfile_env("broker")["GROKER_DB_PATH"] == "/data/groker.db"


def test_default_urls_reach_the_services() -> None:
    # The manifests leave these to the settings' defaults, which must name the Services.
    for name, settings_class in (("server", ServerSettings), ("client", ClientSettings)):
        assert "GROKER_BROKER_URL" not in container_env(name)
        assert settings_class.model_fields["broker_url"].default == service_url("broker")
    assert "GROKER_CALLBACK_URL" not in container_env("server")
    callback_url = ServerSettings.model_fields["callback_url"].default
    assert callback_url == service_url("server") + "/notifications"


def service_url(name: str) -> str:
    [port] = resource(name, "Service")["spec"]["ports"]
    return f"http://{name}:{port['port']}"


def test_every_client_replica_subscribes_with_its_own_pod_ip() -> None:
    assert resource("client", "Deployment")["spec"]["replicas"] == 3
    entries = container("client")["env"]
    names = [entry["name"] for entry in entries]
    pod_ip, callback = names.index("POD_IP"), names.index("GROKER_CALLBACK_URL")
    # $(POD_IP) expands only if POD_IP is defined earlier in the list.
    assert pod_ip < callback
    assert entries[pod_ip]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    port = container("client")["ports"][0]["containerPort"]
    assert entries[callback]["value"] == f"http://$(POD_IP):{port}/messages"


@pytest.mark.parametrize("name", SERVICES)
def test_deployment_selects_its_own_pods(name: str) -> None:
    deployment = resource(name, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert resource(name, "Service")["spec"]["selector"].items() <= pod_labels.items()
    # No other service's pods match.
    for other in set(SERVICES) - {name}:
        other_labels = resource(other, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert not selector.items() <= other_labels.items()


@pytest.mark.parametrize("name", SERVICES)
def test_runs_as_non_root_with_a_read_only_root_filesystem(name: str) -> None:
    pod = pod_spec(name)["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == pod["runAsGroup"] == pod["fsGroup"] == 10001
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(name)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in security and "runAsUser" not in security
    # gunicorn needs a writable /tmp for its worker heartbeat files.
    volumes = {v["name"]: v for v in pod_spec(name)["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(name)["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize("name", SERVICES)
def test_requests_and_limits_are_set(name: str) -> None:
    resources = container(name)["resources"]
    for bound in ("requests", "limits"):
        assert set(resources[bound]) == {"cpu", "memory"}, bound
    for kind in ("cpu", "memory"):
        request, limit = resources["requests"][kind], resources["limits"][kind]
        assert 0 < quantity(request) <= quantity(limit), f"{kind}: {request} > {limit}"


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
