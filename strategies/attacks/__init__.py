"""Byzantine attacks. Model-poisoning attacks are pipeline stages that replace the byzantine
clients' rows of ``U`` (omniscient ones see the honest rows of the round); data-poisoning attacks
change what a byzantine client trains on. One file per attack."""

from strategies.attacks import (
    alie,
    gaussian,
    ipm,
    label_flip,
    mimic,
    min_max,
    noisy_data,
    random_noise,
    scale,
    sign_flip,
)
from strategies.attacks.base import DataAttack, model_attack

__all__ = [
    "DataAttack",
    "alie",
    "gaussian",
    "ipm",
    "label_flip",
    "mimic",
    "min_max",
    "model_attack",
    "noisy_data",
    "random_noise",
    "scale",
    "sign_flip",
]
