"""The ``fedsim`` command as the benchmarks run it: this interpreter, this checkout's sources.

Not the ``fedsim`` console script beside ``sys.executable``: an editable install may point at
another checkout, and ``python -m fedsim.cli`` needs a ``__main__`` module fedsim does not have.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FEDSIM = [
    sys.executable,
    "-c",
    f"import sys; sys.path.insert(0, {str(ROOT)!r}); from fedsim.cli import main; main()",
]
