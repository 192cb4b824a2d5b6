"""Process-level tuning shared by the long-running commands (serve, worker, simulators)."""

from __future__ import annotations

import gc


def freeze_heap() -> None:
    """Move everything alive now (modules, ORM mappers, lxml schemas, services) out of the
    garbage collector's reach. Call it once a process has started and before it serves: a full
    collection then scans only what the work itself created, instead of every imported module's
    objects (~40 ms each in a producer of the documents bench, several times a second under
    load). Objects are still freed by reference counting; only cycles among frozen objects are
    never collected, and startup leaves none worth collecting."""
    gc.collect()
    gc.freeze()
