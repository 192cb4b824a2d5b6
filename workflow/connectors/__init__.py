"""Outbound connectors: the DSP (IHE XDS.b ITI-41 or FHIR MHD ITI-65) and the CNS (eCIT)."""

from __future__ import annotations

import aiohttp

from konsil.config import WorkflowConfig
from workflow.connectors.cns import CnsConnector
from workflow.connectors.http import client_session
from workflow.connectors.mhd import MhdConnector
from workflow.connectors.xds import XdsConnector
from workflow.outbox import Transport


def build_transports(
    config: WorkflowConfig, session: aiohttp.ClientSession
) -> dict[str, Transport]:
    """One transport per configured target (an unconfigured target keeps its messages pending)."""
    transports: dict[str, Transport] = {}
    if config.cns_url:
        transports["cns"] = CnsConnector(session, config.cns_url)
    if config.dsp_url:
        if config.dsp_transport == "mhd":
            transports["dsp"] = MhdConnector(session, config.dsp_url)
        else:
            transports["dsp"] = XdsConnector(session, config.dsp_url)
    return transports


__all__ = ["build_transports", "client_session"]
