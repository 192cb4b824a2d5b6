"""Starting a simulator from the command line."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

from aiohttp import web

from konsil.runtime import freeze_heap
from workflow.simulators import cns, dsp
from workflow.simulators.common import SimulatorSettings

_PR_SET_PDEATHSIG = 1


def make_app(service: str, settings: SimulatorSettings) -> web.Application:
    app = dsp.create_app(settings) if service == "dsp" else cns.create_app(settings)
    app.on_startup.append(_freeze_heap)
    return app


async def _freeze_heap(_app: web.Application) -> None:
    freeze_heap()  # started (schemas, trust list loaded): collections scan only requests' objects


def serve(
    service: str, host: str, port: int, settings: SimulatorSettings, *, processes: int = 1
) -> None:
    """Serve in this process, or in ``processes`` processes sharing the port (``SO_REUSEPORT``:
    the kernel spreads the connections) and the CNS journal store (``SubmissionStore``)."""
    if processes <= 1:
        web.run_app(make_app(service, settings), host=host, port=port, print=None, access_log=None)
        return
    if service != "cns" or not settings.journal:
        raise ValueError("several processes serve the CNS simulator with --journal only")
    children: list[int] = []
    for _ in range(processes - 1):
        pid = os.fork()
        if pid == 0:  # a child: serve until told to stop, or until the parent is gone
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() == 1:
                os._exit(0)
            try:
                _serve_shared(service, host, port, settings)
            finally:
                sys.stdout.flush()
                os._exit(0)
        children.append(pid)
    try:
        _serve_shared(service, host, port, settings)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in children:
            os.waitpid(pid, 0)


def _serve_shared(service: str, host: str, port: int, settings: SimulatorSettings) -> None:
    # The app (and its store's journal descriptor, whose flock must be this process's own) is
    # made after the fork.
    web.run_app(
        make_app(service, settings),
        host=host,
        port=port,
        print=None,
        access_log=None,
        reuse_port=True,
    )
