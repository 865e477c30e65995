"""Generate the deployment's tokens and webhook secret once, into a directory the services
read with GROKER_SECRETS_DIR (one file per setting, named like its variable).

    python -m groker_common.make_secrets /secrets

Compose runs this as a one-shot service before the others, so a fresh `docker compose up`
is protected without anyone choosing passwords, and nothing secret is baked into an image.
Files that exist are kept: the secrets survive restarts and rebuilds."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from groker_common.signatures import new_secret


def main(directory: str) -> None:
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    publish, manage = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    wanted = {
        # the broker accepts these (comma-separated lists)...
        "GROKER_PUBLISH_TOKENS": publish,
        "GROKER_MANAGE_TOKENS": manage,
        # ...and the load generator and the clients send these
        "GROKER_PUBLISH_TOKEN": publish,
        "GROKER_MANAGE_TOKEN": manage,
        "GROKER_CALLBACK_SECRET": new_secret(),
    }
    if all((target / name).exists() for name in wanted):
        print(f"secrets in {target} already made; kept")
        return
    for name, value in wanted.items():
        path = target / name
        path.unlink(missing_ok=True)  # a half-made set from an interrupted run is replaced
        path.write_text(value)
        os.chmod(path, 0o400)
    print(f"made {len(wanted)} secrets in {target}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/secrets")
