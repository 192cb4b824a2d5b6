"""A real TURN relay (coturn) for tests: the teleconsultation calls and Matrix's
``/voip/turnServer`` credentials are checked against it."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

TURN_SECRET = "turn-shared-secret-for-tests"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class Turn:
    """A coturn process; ``stop()`` and ``start()`` cut and restore the relay (a network drop
    for a relay-only call)."""

    port: int
    url: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_turn(tmp_path: Path) -> Iterator[Turn]:
    exe = shutil.which("turnserver")
    if exe is None:
        pytest.skip("coturn is not installed (apt-get install coturn)")
    port = free_port(socket.SOCK_DGRAM)
    low = 49152 + (port % 1000) * 10
    argv = [
        exe,
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        f"--listening-port={port}",
        f"--min-port={low}",
        f"--max-port={low + 200}",
        "--use-auth-secret",
        f"--static-auth-secret={TURN_SECRET}",
        "--realm=konsil",
        "--no-tls",
        "--no-dtls",
        "--allow-loopback-peers",
        "--no-cli",
        "--fingerprint",
        f"--log-file={tmp_path / 'turn.log'}",
        "--simple-log",
        "--no-stdout-log",
        f"--pidfile={tmp_path / 'turn.pid'}",
        f"--userdb={tmp_path / 'turn.db'}",
    ]
    t = Turn(port, f"turn:127.0.0.1:{port}?transport=udp", argv)
    t.start()
    try:
        yield t
    finally:
        t.stop()
