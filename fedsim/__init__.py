"""fedsim: federated-learning simulation on Flower, driven by scenario files."""

__version__ = "0.1.0"

import os as _os

# Flower's telemetry posts to the network and its update check delays start-up: off unless asked.
_os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
_os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
