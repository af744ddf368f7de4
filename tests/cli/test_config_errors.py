"""Bad settings fail early with an error that names the setting and the allowed values."""

import pytest
import torch

from mtcp.optim import PolyLR
from mtcp.tasks import TASKS, check_task_names, get_task


def test_unknown_task_lists_known_tasks():
    with pytest.raises(ValueError, match=r"unknown task.*'semsegg'.*known tasks are") as err:
        check_task_names(["semsegg", "depth"])
    for name in TASKS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="known tasks"):
        get_task("height")


def test_empty_and_duplicate_task_lists_are_rejected():
    with pytest.raises(ValueError, match="at least one task"):
        check_task_names([])
    with pytest.raises(ValueError, match="duplicate"):
        check_task_names(["depth", "depth"])


def test_poly_schedule_follows_the_formula():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = PolyLR(opt, total_steps=10, power=0.9)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[5] == pytest.approx(0.5**0.9)
    assert lrs[9] == pytest.approx(0.1**0.9)
    with pytest.raises(ValueError, match="total steps"):
        PolyLR(opt, total_steps=0)
