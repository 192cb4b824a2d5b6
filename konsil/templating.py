"""The web pages' Jinja2 environment, built on first use: a process that renders no page (a
Matrix-only one) never imports Jinja2 (~2 MB of RSS)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import jinja2


class Templates:
    def __init__(self, build: Callable[[], jinja2.Environment]) -> None:
        self._build = build
        self._env: jinja2.Environment | None = None

    @property
    def env(self) -> jinja2.Environment:
        if self._env is None:
            self._env = self._build()
        return self._env

    def get_template(self, name: str) -> jinja2.Template:
        return self.env.get_template(name)
