"""Property-based: any augmentation setting on any sample size keeps every label's invariants.

Hypothesis draws the sample size, the zoom, the crop, the flip, the rotation and the jitter; the
sample's maps hold values whose fate is known: class ids (and 255) can only be moved, never
invented; depth is moved and divided by the zoom; normals stay unit vectors (or 0 = invalid).
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtcp.data.transforms import Augmentation
from mtcp.labels import IGNORE_INDEX

EXAMPLES = 150


def sample_of(h: int, w: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    semseg = torch.randint(0, 7, (h, w), generator=gen)
    semseg[torch.rand(h, w, generator=gen) < 0.2] = IGNORE_INDEX
    depth = torch.rand(1, h, w, generator=gen) * 9 + 0.5
    depth[torch.rand(1, h, w, generator=gen) < 0.2] = 0.0  # invalid
    normals = torch.nn.functional.normalize(torch.randn(3, h, w, generator=gen), dim=0)
    normals[:, torch.rand(h, w, generator=gen) < 0.2] = 0.0  # invalid
    sal = torch.randint(0, 2, (h, w), generator=gen)
    return {"image": torch.rand(3, h, w, generator=gen), "semseg": semseg, "depth": depth, "normals": normals,
            "sal": sal, "meta": {"id": "p", "intrinsics": torch.tensor([w * 1.2, w * 1.2, w / 2, h / 2]),
                                 "size": torch.tensor([h, w])}}


settings_ = st.fixed_dictionaries({
    "h": st.integers(1, 24), "w": st.integers(1, 24), "seed": st.integers(0, 2**16),
    "scale": st.floats(0.25, 3.0), "crop": st.none() | st.tuples(st.integers(1, 24), st.integers(1, 24)),
    "flip": st.booleans(), "rotation": st.floats(0.0, 45.0), "jitter": st.floats(0.0, 0.5),
    "resize": st.none() | st.tuples(st.integers(1, 24), st.integers(1, 24)), "draw": st.integers(0, 2**16),
})


@settings(max_examples=EXAMPLES, deadline=None)
@given(settings_)
def test_any_augmentation_keeps_every_label_invariant(s):
    sample = sample_of(s["h"], s["w"], s["seed"])
    augment = Augmentation(scales=(s["scale"],), crop_size=s["crop"], flip=s["flip"], rotation=s["rotation"],
                           color_jitter=s["jitter"], resize=s["resize"])
    out = augment(sample, torch.Generator().manual_seed(s["draw"]))
    grid = s["crop"] or s["resize"] or (s["h"], s["w"])
    for key in ("semseg", "sal"):
        assert out[key].shape == grid and out[key].dtype == torch.int64
        assert set(out[key].unique().tolist()) <= set(sample[key].unique().tolist()) | {IGNORE_INDEX}, key
    image = out["image"]
    assert image.shape == (3, *grid) and torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    depth = out["depth"]
    assert depth.shape == (1, *grid) and torch.isfinite(depth).all() and (depth >= 0).all()
    known = sample["depth"][sample["depth"] > 0] / s["scale"]  # a zoom by s brings the scene s times closer
    for value in depth[depth > 0].unique():
        assert torch.isclose(known, value, rtol=1e-5).any(), float(value)
    norms = out["normals"].norm(dim=0)
    assert out["normals"].shape == (3, *grid) and torch.isfinite(out["normals"]).all()
    assert ((norms - 1).abs() < 1e-5).logical_or(norms == 0).all()
    z_in = sample["normals"][2][sample["normals"].norm(dim=0) > 0]  # in-plane turns and flips keep z
    for value in out["normals"][2][norms > 0].unique():
        assert torch.isclose(z_in, value, atol=1e-6).any(), float(value)
    assert all(math.isfinite(float(v)) for v in out["meta"]["intrinsics"])
