"""Property-based, over the task registry: metrics and losses on any predictions and labels.

Hypothesis draws the batch, the image size, the output scale (tiny to saturating logits) and which
pixels carry a label, down to images with none (ignore-only, empty) and single-class images.
Metrics: no exception, every value finite whenever one pixel has a label (never inf), and the
result of two ranks' halves merged equals the one-process result (how DDP reduces the states).
Losses: finite and >= 0 for any valid label, a finite gradient, and with no valid pixel exactly
zero with the graph still connected (so DDP sees every parameter used).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtcp.tasks import TASKS, get_task

EXAMPLES = 60
CLASSES = {"semseg": 5, "human_parts": 4}
#: when a metric is defined beyond "one pixel has a label": the edge F-measure is 0/0 (NaN, documented
#: in `EdgeMetrics`) when neither the labels nor the predictions hold an edge pixel
DEFINED = {"edge": lambda label, valid: bool(((label == 1) & valid).any())}

draws = st.fixed_dictionaries({
    "b": st.integers(1, 4), "h": st.integers(1, 12), "w": st.integers(1, 12), "seed": st.integers(0, 2**16),
    "scale": st.sampled_from([1e-3, 1.0, 30.0, 300.0]), "labelled": st.sampled_from([0.0, 0.05, 0.5, 1.0]),
    "single_class": st.booleans(),
})


def inputs(name: str, d: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(raw output, label, valid mask [B, H, W]) of task ``name``."""
    task = get_task(name)
    channels = task.out_channels(CLASSES)
    gen = torch.Generator().manual_seed(d["seed"])
    b, h, w = d["b"], d["h"], d["w"]
    raw = torch.randn(b, channels, h, w, generator=gen) * d["scale"]
    label = task.label.random(b, h, w, channels, gen)
    if d["single_class"] and task.label.dense_class:
        label = torch.full_like(label, int(label.flatten()[0]))
    valid = torch.rand(b, h, w, generator=gen) < d["labelled"]
    if task.label.dense_class:
        label = torch.where(valid, label, torch.full_like(label, int(task.label.fill)))
    else:
        label = label * valid[:, None]
    return raw, label, valid


@pytest.mark.parametrize("name", sorted(TASKS))
@settings(max_examples=EXAMPLES, deadline=None)
@given(d=draws)
def test_metrics_are_finite_where_defined_and_split_like_ddp(name, d):
    task = get_task(name)
    raw, label, valid = inputs(name, d)
    output = task.activation(raw)
    whole = task.make_metric(task.out_channels(CLASSES))
    whole.update(output, label)
    result = {k: float(v) for k, v in whole.compute().items()}
    assert not any(math.isinf(v) for v in result.values()), result
    if valid.any() and DEFINED.get(name, lambda *_: True)(label, valid):
        assert all(math.isfinite(v) for v in result.values()), result
    if d["b"] > 1:  # rank 0 takes the first image(s), rank 1 the rest; states merged as DDP reduces them
        cut = d["b"] // 2
        rank0, rank1 = task.make_metric(task.out_channels(CLASSES)), task.make_metric(task.out_channels(CLASSES))
        rank0.update(output[:cut], label[:cut])
        rank1.update(output[cut:], label[cut:])
        rank0.merge_state(rank1)
        merged = {k: float(v) for k, v in rank0.compute().items()}
        assert merged.keys() == result.keys()
        for key, value in result.items():
            assert merged[key] == pytest.approx(value, rel=1e-9, abs=1e-9, nan_ok=True), key


@pytest.mark.parametrize("name", sorted(TASKS))
@settings(max_examples=EXAMPLES, deadline=None)
@given(d=draws)
def test_losses_are_finite_nonnegative_and_zero_with_a_graph_when_nothing_is_labelled(name, d):
    task = get_task(name)
    raw, label, valid = inputs(name, d)
    raw.requires_grad_(True)
    loss = task.loss(task.activation(raw), label)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss >= 0
    loss.backward()
    assert raw.grad is not None and torch.isfinite(raw.grad).all()
    if not valid.any():
        assert loss == 0 and (raw.grad == 0).all()
