"""Loss balancers: Lightning callbacks that set the module's task weights."""

from mtcp.balancers.base import Balancer
from mtcp.balancers.equal import EqualWeights

__all__ = ["Balancer", "EqualWeights"]
