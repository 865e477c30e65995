"""The base of every service's settings: GROKER_* environment variables, read once.

Each service's settings class (BrokerSettings, ServerSettings, ClientSettings) inherits it and
states its fields and their defaults; a default is stated there only, never restated in
docker-compose.yml or k8s/ (tests/k8s/test_settings_defaults.py checks)."""

from __future__ import annotations

import os

from pydantic_settings import BaseSettings, SettingsConfigDict


class GrokerSettings(BaseSettings):
    # Tokens and secrets may also come from files named like the variables in
    # GROKER_SECRETS_DIR (compose secrets, Kubernetes secret volumes), itself read once, when
    # this module is imported.
    model_config = SettingsConfigDict(
        env_prefix="GROKER_", frozen=True, secrets_dir=os.environ.get("GROKER_SECRETS_DIR")
    )
