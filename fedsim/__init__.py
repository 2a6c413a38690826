"""fedsim: federated-learning simulation on Flower, driven by scenario files.

The Python API (``fedsim.run``, ``fedsim.resume``, ``fedsim.load_run``, ``fedsim.load_sweep``,
``fedsim.report``; see ``fedsim.api``) is loaded on first use, so ``import fedsim`` stays cheap.
"""

from __future__ import annotations

import os as _os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Flower's telemetry posts to the network and its update check delays start-up: off unless asked.
_os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
_os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

if TYPE_CHECKING:
    from fedsim.api import Run, Sweep, load_run, load_sweep, report, resume, run
    from fedsim.errors import ScenarioError, SweepError, UserError

__all__ = [
    "Run",
    "ScenarioError",
    "Sweep",
    "SweepError",
    "UserError",
    "load_run",
    "load_sweep",
    "report",
    "resume",
    "run",
]
_ERRORS = ("ScenarioError", "SweepError", "UserError")


def __getattr__(name: str) -> Any:
    if name in _ERRORS:
        from fedsim import errors

        return getattr(errors, name)
    if name in __all__:
        from fedsim import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedsim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
