"""Equal weighting: ``total = sum_t L_t`` (the usual multi-task baseline)."""

from __future__ import annotations

from mtcp.balancers.base import Balancer


class EqualWeights(Balancer):
    """Every task weight is 1 and losses are not projected."""
