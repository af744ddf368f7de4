"""Property-based: batching mixed sizes and aligning predictions back loses and invents nothing.

For any mix of sample sizes, any eval grid and either eval mode: every label sits unchanged at the
top-left of the padded label grid with its invalid value around it; every image sits at the
top-left of the input grid (exactly, when it was not resized); and a prediction that is one
constant per sample inside the image and garbage in the padding aligns back to exactly that
constant over the original label, anything else only where the label is invalid: the padding
never leaks into a score.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtcp.data.collate import PadCollate, align_to_labels, fitted_size
from mtcp.labels import IGNORE_INDEX

EXAMPLES = 150

sizes = st.tuples(st.integers(1, 20), st.integers(1, 20))


def sample_of(h: int, w: int, k: int) -> dict:
    gen = torch.Generator().manual_seed(k)
    return {"image": torch.rand(3, h, w, generator=gen), "semseg": torch.randint(0, 5, (h, w), generator=gen),
            "depth": torch.rand(1, h, w, generator=gen) + 0.5,
            "meta": {"id": str(k), "intrinsics": torch.tensor([10.0, 10.0, w / 2, h / 2]),
                     "size": torch.tensor([h, w])}}


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(sizes, min_size=1, max_size=4), st.none() | sizes, st.sampled_from(["pad", "resize"]))
def test_mixed_sizes_batch_and_align_back_exactly(shapes, eval_size, mode):
    samples = [sample_of(h, w, k) for k, (h, w) in enumerate(shapes)]
    batch = PadCollate(eval_size, mode)(samples)
    grid = tuple(batch["image"].shape[-2:])
    label_hw = tuple(batch["semseg"].shape[-2:])
    assert grid == (eval_size or (max(h for h, _ in shapes), max(w for _, w in shapes)))
    assert label_hw[0] >= max(grid[0], *(h for h, _ in shapes)) and label_hw[1] >= max(grid[1], *(w for _, w in shapes))
    for i, ((h, w), sample) in enumerate(zip(shapes, samples, strict=True)):
        assert torch.equal(batch["semseg"][i, :h, :w], sample["semseg"])
        assert torch.equal(batch["depth"][i, :, :h, :w], sample["depth"])
        outside = torch.ones(label_hw, dtype=torch.bool)
        outside[:h, :w] = False
        assert (batch["semseg"][i][outside] == IGNORE_INDEX).all() and (batch["depth"][i, 0][outside] == 0).all()
        ih, iw = batch["meta"]["input_size"][i].tolist()
        assert (ih, iw) == (fitted_size((h, w), eval_size, mode) if eval_size else (h, w))
        if (ih, iw) == (h, w):
            assert torch.equal(batch["image"][i, :, :h, :w], sample["image"])
        assert (batch["image"][i, :, ih:, :] == 0).all() and (batch["image"][i, :, :, iw:] == 0).all()
    constants = torch.arange(1.0, len(shapes) + 1)
    pred = torch.full((len(shapes), 2, *grid), 1e6)  # garbage in the padding
    for i in range(len(shapes)):
        ih, iw = batch["meta"]["input_size"][i].tolist()
        pred[i, :, :ih, :iw] = constants[i]
    aligned = align_to_labels(pred, batch["meta"], label_hw)
    assert aligned.shape == (len(shapes), 2, *label_hw)
    for i, (h, w) in enumerate(shapes):
        torch.testing.assert_close(aligned[i, :, :h, :w], torch.full((2, h, w), float(constants[i])))
        other = ((aligned[i] - constants[i]).abs() > 1e-5).any(dim=0)  # padding, garbage: only where no label is
        assert (batch["semseg"][i][other] == IGNORE_INDEX).all() and (batch["depth"][i, 0][other] == 0).all()
