"""The HTTP client the connectors share: timeouts and TLS client certificates from config."""

from __future__ import annotations

import ssl

import aiohttp

from konsil.config import WorkflowConfig
from konsil.errors import ConfigError


def ssl_context(config: WorkflowConfig) -> ssl.SSLContext | None:
    """A TLS context with the configured CA and client certificate, or None for the defaults."""
    if not (config.ca_file or config.client_cert):
        return None
    ctx = ssl.create_default_context(cafile=config.ca_file or None)
    if config.client_cert:
        try:
            ctx.load_cert_chain(config.client_cert, config.client_key or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"workflow.client_cert/client_key cannot be loaded: {exc}") from None
    return ctx


def client_session(
    config: WorkflowConfig, *, timeout_seconds: float = 30.0
) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(ssl=ssl_context(config) or True, limit=100)
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_seconds)
    )


def classify_status(status: int) -> str:
    """Which HTTP answers are worth another try: 5xx, 408 and 429 are; other 4xx are final."""
    if status >= 500 or status in (408, 425, 429):
        return "retry"
    if status >= 400:
        return "rejected"
    return "delivered"
