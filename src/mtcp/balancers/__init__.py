"""Loss balancers: Lightning callbacks that set the module's task weights (or its objective).

=========================  ==========================================================
`EqualWeights`             ``sum_t L_t``
`FixedWeights`             ``sum_t w_t L_t`` with hand-chosen ``w_t``
`LossPrioritization`       LPS of MT-CP (WACV 2025): log-projected losses, weights
                           from the windowed loss-ratio history, spread control
`DWA`                      dynamic weight average (Liu et al., CVPR 2019)
`UncertaintyWeighting`     learned log-variances (Kendall et al., CVPR 2018)
`GLS`                      geometric mean of the losses (Chennupati et al., 2019)
`RLW`                      random weights every step (Lin et al., 2021)
`FAMO`                     fast adaptive multitask optimization (Liu et al., NeurIPS 2023)
=========================  ==========================================================
"""

from mtcp.balancers.base import Balancer
from mtcp.balancers.dwa import DWA
from mtcp.balancers.equal import EqualWeights
from mtcp.balancers.famo import FAMO
from mtcp.balancers.fixed import FixedWeights
from mtcp.balancers.gls import GLS
from mtcp.balancers.lps import LossPrioritization
from mtcp.balancers.rlw import RLW
from mtcp.balancers.uncertainty import UncertaintyWeighting

__all__ = [
    "DWA",
    "FAMO",
    "GLS",
    "RLW",
    "Balancer",
    "EqualWeights",
    "FixedWeights",
    "LossPrioritization",
    "UncertaintyWeighting",
]
