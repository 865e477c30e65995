"""The short form of bench/soak.py, against the session's deployment: nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import ROOT, System


def test_short_soak_loses_nothing(three_clients: System):
    system = three_clients
    done = subprocess.run(
        [sys.executable, "bench/soak.py", "--seconds", "10", "--rate", "50", "--no-manage"],
        cwd=ROOT,
        env={
            **system.env,
            "GROKER_E2E_BROKER_URL": system.broker_url,
            "GROKER_E2E_SERVER_URL": system.server_url,
            "GROKER_E2E_PUBLISH_TOKEN": system.tokens["publish"] or "",
        },
        capture_output=True,
        text=True,
        timeout=180,
    )
    print(done.stdout, done.stderr)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0
    assert result["accepted"] >= 300
    assert result["lost"] == 0 and result["published"] == result["accepted"]
    assert result["delivered"] >= 3 * result["accepted"]
