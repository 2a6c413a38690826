"""Inner-product manipulation (Xie et al., 2020, "Fall of Empires")."""

from __future__ import annotations

from pydantic import Field

from fedsim.registry import ATTACKS, Params
from strategies.attacks.base import model_attack
from strategies.attacks.sign_flip import reversed_mean
from strategies.pipeline import Stage


class IpmParams(Params):
    eps: float = Field(0.1, gt=0, description="byzantine update = -eps · honest mean")


@ATTACKS.register("ipm", IpmParams)
def ipm(p: IpmParams) -> Stage:
    """Byzantine clients send -eps times the honest mean, making its inner product negative.

    The same forgery as ``sign_flip``; the two differ in scale and intent: a small eps keeps the
    update close to the honest ones so that distance-based rules let it through.
    """
    return model_attack(reversed_mean(p.eps))
