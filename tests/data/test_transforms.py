"""Joint augmentation keeps every map of a sample consistent with the image."""

import pytest
import torch

from mtcp.data.transforms import Augmentation


def make_sample(h: int = 8, w: int = 12) -> dict:
    """A sample whose maps encode their pixel coordinates, so moves are traceable."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    z = torch.full_like(xs, -5.0, dtype=torch.float)
    normals = torch.nn.functional.normalize(torch.stack((xs + 1.0, ys + 2.0, z)), dim=0)
    return {
        "image": torch.rand(3, h, w),
        "semseg": (xs % 5).long(),
        "sal": (xs > w // 2).long(),
        "depth": (1.0 + xs.float() + 10 * ys.float())[None],
        "normals": normals,
        "meta": {"id": "x", "intrinsics": torch.tensor([10.0, 10.0, 6.0, 4.0]), "size": torch.tensor([h, w])},
    }


def test_identity_settings_change_nothing():
    s = make_sample()
    out = Augmentation(flip=False)(s)
    for key in ("semseg", "sal", "depth", "normals"):
        assert torch.equal(out[key], s[key]), key
    assert torch.allclose(out["image"], s["image"], atol=1e-6)


def test_flip_mirrors_maps_and_negates_normal_x():
    torch.manual_seed(0)
    s = make_sample()
    aug = Augmentation(flip=True)
    flipped = None
    for _ in range(20):  # flip happens with probability 1/2
        out = aug(s)
        if not torch.equal(out["semseg"], s["semseg"]):
            flipped = out
            break
    assert flipped is not None
    assert torch.equal(flipped["semseg"], s["semseg"].flip(-1))
    assert torch.equal(flipped["depth"], s["depth"].flip(-1))
    expected_normals = s["normals"].flip(-1) * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
    assert torch.allclose(flipped["normals"], expected_normals)
    assert torch.allclose(flipped["image"], s["image"].flip(-1), atol=1e-6)
    # principal point mirrored: cx -> W - cx
    assert flipped["meta"]["intrinsics"][2].item() == pytest.approx(12 - 6.0)


def test_zoom_by_two_divides_depth_and_scales_intrinsics():
    s = make_sample(8, 12)
    out = Augmentation(scales=(2.0,), flip=False, crop_size=(16, 24))(s)
    # a 2x zoom with a crop of twice the size shows the whole image: pixel (2i, 2j) comes from (i, j)
    assert torch.allclose(out["depth"][:, ::2, ::2], s["depth"] / 2.0)
    assert torch.equal(out["semseg"][::2, ::2], s["semseg"])
    fx, fy, cx, cy = out["meta"]["intrinsics"].tolist()
    assert (fx, fy, cx, cy) == pytest.approx((20.0, 20.0, 12.0, 8.0))


def test_resize_changes_the_grid_not_the_values():
    """The authors' FixedResize: 8x12 -> 16x4 (x2 rows, /3 columns); depth is not a zoom, so it keeps its values."""
    s = make_sample(8, 12)
    out = Augmentation(flip=False, resize=(16, 4))(s)
    assert out["semseg"].shape == (16, 4) and out["image"].shape == (3, 16, 4)
    # output pixel (r, c) has its centre on input row (r + 0.5) / 2 and on the centre of input column 3c + 1
    assert torch.equal(out["semseg"], s["semseg"][torch.arange(16) // 2][:, 3 * torch.arange(4) + 1])
    # depth is resampled by nearest neighbour too (its label kind), and not divided by any zoom
    assert torch.equal(out["depth"][0], s["depth"][0][torch.arange(16) // 2][:, 3 * torch.arange(4) + 1])
    fx, fy, cx, cy = out["meta"]["intrinsics"].tolist()
    assert (fx, fy, cx, cy) == pytest.approx((10 / 3, 20.0, 2.0, 8.0))
    with pytest.raises(ValueError, match=r"data.augmentation.resize must be two positive integers"):
        Augmentation(resize=(16,))


def test_padding_fills_labels_with_ignore_and_depth_with_zero():
    s = make_sample(8, 12)
    ys, xs = torch.meshgrid(torch.arange(8), torch.arange(12), indexing="ij")
    s["depth"] = (1.0 + xs // 2 + 10 * (ys // 2)).float()[None]  # constant on 2x2 blocks
    out = Augmentation(scales=(0.5,), flip=False, crop_size=(8, 12))(s)
    # the 4x6 zoomed image sits in the centre of the 8x12 crop: borders are padding
    assert (out["semseg"][0] == 255).all() and (out["semseg"][:, 0] == 255).all()
    assert (out["depth"][0, 0] == 0).all() and (out["normals"][:, 0] == 0).all()
    inner = out["depth"][0, 2:6, 3:9]
    assert torch.allclose(inner, s["depth"][0, ::2, ::2] * 2.0)  # each block -> one pixel; zoom 0.5 doubles depth
    assert set(out["sal"].unique().tolist()) <= {0, 1, 255}


def draws_always(monkeypatch, value: float) -> None:
    """Every scalar draw of the augmentation returns ``value`` (so the rotation angle is known)."""
    real_rand = torch.rand

    def rand(*size, **kwargs):
        if size in ((), ((),)):
            return torch.tensor(value)
        return real_rand(*size, **kwargs)

    monkeypatch.setattr(torch, "rand", rand)


# Normals live in the camera frame, x right, y down (the pixel grid's column and row
# directions), so a normal is an arrow drawn on the image and must turn with the image
# content. A constant normal field n = (0.48, 0.6, -0.64) (unit length), rotated by
# exactly +-90 or 180 degrees (angle = (2 * draw - 1) * rotation), with the expected
# vectors written from the geometry:
# - the rotation that moves what lay right of the centre (+x) to below it (+y, rows grow
#   downwards) moves what lay below (+y) to the left (-x): (nx, ny) -> (-ny, nx);
# - the opposite one moves right (+x) to above (-y) and below (+y) to right (+x):
#   (nx, ny) -> (ny, -nx);
# - 180 degrees: right -> left, below -> above: (nx, ny) -> (-nx, -ny).
# A depth marker two pixels right of the centre pixel (4, 4) of the 9x9 image shows
# which way the content turned; z is never touched.
@pytest.mark.parametrize("rotation,draw,marker_at,expected", [
    (180.0, 0.75, (6, 4), (-0.6, 0.48, -0.64)),  # marker right -> below
    (180.0, 0.25, (2, 4), (0.6, -0.48, -0.64)),  # marker right -> above
    (360.0, 0.75, (4, 2), (-0.48, -0.6, -0.64)),  # marker right -> left
])
def test_rotation_rotates_normals_in_plane(monkeypatch, rotation, draw, marker_at, expected):
    s = make_sample(9, 9)
    s["normals"] = torch.tensor([0.48, 0.6, -0.64]).view(3, 1, 1).repeat(1, 9, 9)
    s["depth"] = torch.ones(1, 9, 9)
    s["depth"][0, 4, 6] = 5.0
    draws_always(monkeypatch, draw)
    out = Augmentation(flip=False, rotation=rotation)(s)
    moved = (out["depth"][0] == 5.0).nonzero().tolist()
    assert moved == [list(marker_at)]
    # a quarter or half turn of the square image maps pixels onto pixels: every normal is valid
    assert torch.allclose(out["normals"], torch.tensor(expected).view(3, 1, 1).expand(3, 9, 9), atol=1e-6)


def test_photometric_jitter_touches_only_the_image():
    torch.manual_seed(2)
    s = make_sample()
    out = Augmentation(flip=False, color_jitter=0.5)(s)
    assert not torch.allclose(out["image"], s["image"])
    assert out["image"].min() >= 0 and out["image"].max() <= 1
    assert torch.equal(out["depth"], s["depth"]) and torch.equal(out["semseg"], s["semseg"])


@pytest.mark.parametrize("kwargs,needle", [
    ({"scales": (0.0,)}, "scales"),
    ({"crop_size": (0, 10)}, "crop_size"),
    ({"rotation": -1.0}, "rotation"),
])
def test_bad_settings_raise_naming_the_setting(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        Augmentation(**kwargs)
