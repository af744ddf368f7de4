"""LPS on the authors' schedule (window one epoch, ``init: equal``, kappa of PASCAL-Context) reproduces the
weight sequence the paper's equations give on a sequence of per-epoch losses, worked out by hand below.

The authors' released code computes the same sequence without the last step (the floor and the
renormalisation to sum T, which this project adds so that no weight is negative): as long as every weight
stays positive, theirs is ours scaled by sum(theirs) / T, which the test checks too. (Their code then
never applies the weights, and it runs the history on unprojected losses: see docs/method.md section 3.)
"""

from __future__ import annotations

import pytest
from test_balancers import assert_rows, run_epochs, unproj

from mtcp.balancers import LossPrioritization

# per-epoch mean projected losses l_t(k) of (semseg, depth, normals); one step per epoch
EPOCHS = [[2.0, 0.5, 1.0], [1.6, 0.45, 0.5], [1.2, 0.4, 0.45], [1.0, 0.38, 0.44]]
KAPPA = 1.6

# after epoch 0 (init "equal"): w = l(0) / l_t(0) = 3.5 / [2, 0.5, 1] = [1.75, 7, 3.5] (sum 12.25)
AUTHORS_1 = [1.75, 7.0, 3.5]
# after epoch 1: r = [1.6/2, 0.45/0.5, 0.5/1] = [0.8, 0.9, 0.5], R = 2.55/3.5 = 51/70,
#   r/R = [56/51, 63/51, 35/51], mean 154/153, spread 1.6: mean + 1.6 (r/R - mean)
#   = [(154 + 1.6*14)/153, (154 + 1.6*35)/153, (154 - 1.6*49)/153] = [176.4, 210, 75.6] / 153
AUTHORS_2 = [176.4 / 153, 210 / 153, 75.6 / 153]
# after epoch 2: r = [1.2/1.6, 0.4/0.45, 0.45/0.5] = [3/4, 8/9, 9/10], R = 2.05/2.55 = 41/51,
#   r/R = [153/164, 136/123, 459/410]; mean m = (153/164 + 136/123 + 459/410) / 3
R2 = [0.75 * 51 / 41, 8 / 9 * 51 / 41, 0.9 * 51 / 41]
M2 = sum(R2) / 3
AUTHORS_3 = [M2 + KAPPA * (x - M2) for x in R2]


def _ours(authors: list[float]) -> list[float]:
    """Our floor (not reached here) and renormalisation to sum T = 3."""
    assert min(authors) > 0.01
    return [3 * w / sum(authors) for w in authors]


def test_lps_reproduces_the_papers_weight_sequence_on_the_authors_schedule():
    steps = [[[unproj(p) for p in epoch]] for epoch in EPOCHS]  # one step per epoch: its mean is the value
    used, _, _ = run_epochs(LossPrioritization(spread=KAPPA, window="epoch", init="equal"), steps)
    expected = [[1.0, 1.0, 1.0], _ours(AUTHORS_1), _ours(AUTHORS_2), _ours(AUTHORS_3)]
    assert_rows(used, expected, tol=1e-6)  # the installed weights are float32
    assert used[1] == pytest.approx([3 / 7, 12 / 7, 6 / 7], abs=1e-6)  # 3 * [1.75, 7, 3.5] / 12.25
    # the authors' unnormalised weights are ours times sum(theirs) / T
    for ours, theirs in zip(used[1:], (AUTHORS_1, AUTHORS_2, AUTHORS_3), strict=True):
        assert [w * sum(theirs) / 3 for w in ours] == pytest.approx(theirs, abs=1e-6)
