"""Every setting's default is stated once, in its service's settings class.

docker-compose.yml (and its overrides, docker-compose.cluster.yml and docker-compose.ha.yml)
and the manifests in k8s/ (each kustomization as rendered: the base and its overlays) give a
GROKER_* variable a value only where the deployment deliberately differs from that default
(DEPLOYMENT_DIFFERENCES below). A value equal to the default would silently override a later
change of the default in settings.py; one that differs without being listed is a default
changed behind the settings' back. Compose may name a variable without a value: it is passed
through from the shell or an .env file when set there and left unset otherwise, so the default
applies."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from broker.settings import BrokerSettings
from client.settings import ClientSettings
from groker_common.settings import GrokerSettings
from k8s.deployments import build, load_compose
from server.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
# Overrides merged onto COMPOSE_FILE; each value they give is checked like the base file's.
CLUSTER_COMPOSE_FILE = ROOT / "docker-compose.cluster.yml"
HA_COMPOSE_FILE = ROOT / "docker-compose.ha.yml"
COMPOSE_FILES = [COMPOSE_FILE, CLUSTER_COMPOSE_FILE, HA_COMPOSE_FILE]
# Every kustomization in k8s/, rendered as `kubectl apply -k` would apply it.
K8S_KUSTOMIZATIONS = sorted(p.parent for p in (ROOT / "k8s").rglob("kustomization.yaml"))
DEPLOYMENT_FILES = [*COMPOSE_FILES, *K8S_KUSTOMIZATIONS]

SETTINGS: dict[str, type[GrokerSettings]] = {
    "broker": BrokerSettings,
    "server": ServerSettings,
    "client": ClientSettings,
}
# Read by the GrokerSettings base itself rather than a field; unset by default.
BASE_VARIABLES = {"GROKER_SECRETS_DIR"}

# The deliberate deployment differences, (service, variable). Keep it short: anything not
# listed is left to its default, and a listed variable must still differ from it.
DEPLOYMENT_DIFFERENCES = {
    # Tokens and the callback secret are files in the mounted secrets volume (compose) or
    # Secret (k8s); nothing secret is in the images or the repository.
    ("broker", "GROKER_SECRETS_DIR"),
    ("server", "GROKER_SECRETS_DIR"),
    ("client", "GROKER_SECRETS_DIR"),
    # Callbacks may point into the deployment's own network: compose's subnet, the pod network.
    ("broker", "GROKER_ALLOWED_NETWORKS"),
    # The SQLite file on the broker's persistent volume (the k8s base mounts it at /data).
    ("broker", "GROKER_DB_PATH"),
    # Each client replica subscribes with its own pod IP (the Downward API's status.podIP).
    ("client", "GROKER_CALLBACK_URL"),
    # Cluster mode: the replicas share the queue in Valkey, and in compose everyone reaches the
    # broker through the load balancer in front of them (in k8s, the broker Service does).
    ("broker", "GROKER_STORE"),
    ("server", "GROKER_BROKER_URL"),
    ("client", "GROKER_BROKER_URL"),
    # Replicated Valkey: the primary is whichever the Sentinels name, and a write is answered
    # once a replica has it on disk too.
    ("broker", "GROKER_VALKEY_SENTINELS"),
    ("broker", "GROKER_VALKEY_WAIT_REPLICAS"),
}

# ${NAME:-default}, ${NAME-default} or ${NAME}, as compose interpolates them.
COMPOSE_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}")
PASSED_THROUGH = None  # compose: a name without a value
FROM_ELSEWHERE = object()  # k8s: valueFrom (a Secret, a field of the pod...)


# --- the settings, from the classes themselves ----------------------------------------------


def variables(settings_class: type[GrokerSettings]) -> dict[str, tuple[str, str]]:
    """Each GROKER_* variable the class reads, upper-cased: (its field, the argument that
    sets the field: the field's name, or the alias the variable is)."""
    prefix = settings_class.model_config["env_prefix"]
    found = {}
    for name, field in settings_class.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            found[f"{prefix}{name}".upper()] = (name, name)
            continue
        for key in alias.choices if isinstance(alias, AliasChoices) else [alias]:
            assert isinstance(key, str), f"{settings_class.__name__}.{name}: alias {key!r}"
            found[key.upper()] = (name, key)
    return {variable: field for variable, field in found.items() if variable.startswith(prefix)}


@cache
def from_arguments_only(settings_class: type[GrokerSettings]) -> type[GrokerSettings]:
    """The class reading only its arguments, not this test's environment or secrets."""

    class FromArguments(settings_class):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings,)

    return FromArguments


def parsed(settings_class: type[GrokerSettings], variable: str, value: str | None) -> Any:
    """The setting as the service reads it from this value; its default if value is None."""
    name, argument = variables(settings_class)[variable]
    arguments = {} if value is None else {argument: value}
    return getattr(from_arguments_only(settings_class)(**arguments), name)


# --- what the deployments give --------------------------------------------------------------


def compose_environments(path: Path) -> dict[str, dict[str, Any]]:
    """Each compose service's environment as the file gives it, with nothing overridden."""
    services = load_compose(path)["services"]
    environments = {}
    for service, definition in services.items():
        environment = definition.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(
                entry.split("=", 1) if "=" in entry else (entry, None) for entry in environment
            )
        environments[service] = {
            name: PASSED_THROUGH
            if value is None
            else COMPOSE_VARIABLE.sub(lambda m: m["default"] or "", str(value))
            for name, value in environment.items()
        }
    return environments


def k8s_environments(kustomization: Path) -> dict[str, dict[str, Any]]:
    """Each container's environment, by container name, across the rendered workloads."""
    environments: dict[str, dict[str, Any]] = {}
    for document in build(kustomization):
        pod = document.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            environment = environments.setdefault(container["name"], {})
            for entry in container.get("env", []):
                environment[entry["name"]] = entry.get("value", FROM_ELSEWHERE)
    return environments


def environments(path: Path) -> dict[str, dict[str, Any]]:
    return compose_environments(path) if path in COMPOSE_FILES else k8s_environments(path)


# --- the check ------------------------------------------------------------------------------


def problems(service: str, environment: dict[str, Any]) -> list[str]:
    """What is wrong with the GROKER_* variables a deployment gives one service."""
    given = {name: value for name, value in environment.items() if name.startswith("GROKER_")}
    if service not in SETTINGS:
        return [f"{service}: no settings class, yet it is given {sorted(given)}"] if given else []
    settings_class = SETTINGS[service]
    known = variables(settings_class)
    found = []
    for name, value in given.items():
        where = f"{service} {name}={value!r}"
        if name not in known and name not in BASE_VARIABLES:
            found.append(f"{where}: not a setting of {settings_class.__name__}")
            continue
        if value is PASSED_THROUGH:
            continue
        listed = (service, name) in DEPLOYMENT_DIFFERENCES
        if name in BASE_VARIABLES or value is FROM_ELSEWHERE:
            # Unset by default, or a value this file does not hold: listed or wrong.
            if not listed:
                found.append(f"{where}: not a listed deployment difference")
            continue
        default = parsed(settings_class, name, None)
        try:
            value_read = parsed(settings_class, name, value)
        except ValidationError as error:
            found.append(f"{where}: not a valid value: {error}")
            continue
        if value_read == default:
            found.append(
                f"{where}: restates the default ({default!r}) of {settings_class.__name__}; "
                "leave it out (compose may name it without a value, to pass it through)"
            )
        elif not listed:
            found.append(
                f"{where}: differs from the default ({default!r}) of "
                f"{settings_class.__name__} without being in DEPLOYMENT_DIFFERENCES: change "
                "the default in settings.py, or list the difference and say why"
            )
    return found


@pytest.mark.parametrize("path", DEPLOYMENT_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_deployment_gives_values_only_where_it_differs_from_the_defaults(path: Path) -> None:
    found = [
        problem
        for service, environment in environments(path).items()
        for problem in problems(service, environment)
    ]
    assert not found, "\n".join(found)


def test_every_listed_difference_is_used() -> None:
    used = {
        (service, name)
        for path in DEPLOYMENT_FILES
        for service, environment in environments(path).items()
        for name, value in environment.items()
        if value is not PASSED_THROUGH
    }
    assert used >= DEPLOYMENT_DIFFERENCES, f"stale: {sorted(DEPLOYMENT_DIFFERENCES - used)}"


def test_the_check_catches_a_restated_a_changed_and_a_misspelt_setting() -> None:
    assert problems("server", {"GROKER_RATE": PASSED_THROUGH, "PORT": "8001"}) == []
    for environment in (
        {"GROKER_RATE": "1"},  # restated (the default is 1.0)
        {"GROKER_RATE": "2"},  # changed, not listed
        {"GROKER_RATEE": PASSED_THROUGH},  # no such setting
    ):
        assert len(problems("server", environment)) == 1, environment
    assert len(problems("broker", {"GROKER_ALLOWED_NETWORKS": ""})) == 1  # listed, yet the default
    assert len(problems("client", {"GROKER_CLIENT_PORT": "8002"})) == 1  # read under an alias


@pytest.mark.parametrize("service", SETTINGS)
def test_every_service_reads_its_settings_through_the_shared_base(service: str) -> None:
    settings_class = SETTINGS[service]
    assert issubclass(settings_class, GrokerSettings)
    for key in ("env_prefix", "frozen", "secrets_dir"):
        assert settings_class.model_config[key] == GrokerSettings.model_config[key], key
