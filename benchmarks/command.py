"""The ``fedsim`` command as the benchmarks run it: this interpreter, this checkout's sources.

``FEDSIM`` starts it as a subprocess, for the benchmarks that measure a process (its wall time,
memory, start-up) or kill one; ``checkout_fedsim()`` is the Python API, in this process.

Not the ``fedsim`` console script beside ``sys.executable``, nor ``python -m fedsim``: an editable
install may point at another checkout, and the current directory need not be this one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
FEDSIM = [
    sys.executable,
    "-c",
    f"import sys; sys.path.insert(0, {str(ROOT)!r}); from fedsim.cli import main; main()",
]


def checkout_fedsim() -> ModuleType:
    """This checkout's ``fedsim`` (the Python API), imported into this process.

    For the benchmarks that want what a sweep or a report produces rather than what a process
    costs: a ``fedsim`` subprocess would pay Python's start-up and fedsim's imports, seconds,
    again for every sweep and report. SystemExit if this process already has another fedsim.
    """
    if "fedsim" not in sys.modules and sys.path[:1] != [str(ROOT)]:
        sys.path.insert(0, str(ROOT))
    import fedsim

    if Path(fedsim.__file__).resolve().parents[1] != ROOT:
        raise SystemExit(f"this process runs fedsim from {fedsim.__file__}, not from {ROOT}")
    return fedsim
