"""Outbound connectors: the DSP (IHE XDS.b ITI-41 or FHIR MHD ITI-65) and the CNS (eCIT)."""

from __future__ import annotations

import aiohttp

from konsil.config import WorkflowConfig
from workflow.connectors.cns import CnsConnector
from workflow.connectors.http import client_session
from workflow.connectors.mhd import MhdConnector
from workflow.connectors.withdrawal import (
    ByKind,
    CnsWithdrawal,
    MhdWithdrawal,
    XdsWithdrawal,
    update_url,
)
from workflow.connectors.xds import XdsConnector
from workflow.outbox import Transport


def build_transports(
    config: WorkflowConfig, session: aiohttp.ClientSession
) -> dict[str, Transport]:
    """One transport per configured target (an unconfigured target keeps its messages pending);
    each sends documents and withdrawals (``workflow.connectors.withdrawal``)."""
    transports: dict[str, Transport] = {}
    if config.cns_url:
        transports["cns"] = ByKind(
            CnsConnector(session, config.cns_url),
            withdrawal=CnsWithdrawal(session, config.cns_url),
        )
    if config.dsp_url:
        if config.dsp_transport == "mhd":
            transports["dsp"] = ByKind(
                MhdConnector(session, config.dsp_url),
                withdrawal=MhdWithdrawal(session, config.dsp_url),
            )
        else:
            transports["dsp"] = ByKind(
                XdsConnector(session, config.dsp_url),
                withdrawal=XdsWithdrawal(
                    session, config.dsp_update_url or update_url(config.dsp_url)
                ),
            )
    return transports


__all__ = ["build_transports", "client_session"]
