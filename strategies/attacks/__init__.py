"""Byzantine attacks. Model-poisoning attacks are pipeline stages that replace the byzantine
clients' rows of ``U`` (omniscient ones see the honest rows of the round); data-poisoning attacks
change what a byzantine client trains on. One file per attack."""

__all__: list[str] = []
