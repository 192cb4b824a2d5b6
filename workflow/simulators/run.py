"""Starting a simulator from the command line."""

from __future__ import annotations

from aiohttp import web

from workflow.simulators import cns, dsp
from workflow.simulators.common import SimulatorSettings


def make_app(service: str, settings: SimulatorSettings) -> web.Application:
    return dsp.create_app(settings) if service == "dsp" else cns.create_app(settings)


def serve(service: str, host: str, port: int, settings: SimulatorSettings) -> None:
    web.run_app(make_app(service, settings), host=host, port=port, print=None, access_log=None)
