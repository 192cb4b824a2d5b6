"""Every table of every package, for Alembic: importing this registers them all on Base.metadata."""

from __future__ import annotations

import importlib
import importlib.util

from konsil.audit import models as _audit  # noqa: F401
from konsil.auth import models as _auth  # noqa: F401
from konsil.db import Base
from konsil.identity import models as _identity  # noqa: F401

# Feature packages register their tables from their own ``models`` module, when they have one.
for _pkg in ("messaging", "workflow", "rcp", "video"):
    if importlib.util.find_spec(f"{_pkg}.models") is not None:
        importlib.import_module(f"{_pkg}.models")

metadata = Base.metadata
