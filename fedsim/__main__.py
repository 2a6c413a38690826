"""``python -m fedsim …``: the ``fedsim`` command."""

from fedsim.cli import main

main()
