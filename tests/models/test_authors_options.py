"""The authors' network choices, each a named option (docs/fidelity.md): each does what it says, checked
against an independent computation, and the authors' preset has their parameter counts part by part."""

from __future__ import annotations

import pytest
import torch

from conftest import ROOT
from mtcp import losses
from mtcp.cli import cli_main
from mtcp.models import MTCPNet, TimmBackbone
from mtcp.models.backbone import weights_from_checkpoint
from mtcp.models.cfm import CoherenceFusion, naive_spatial_attention, spatial_attention
from mtcp.models.fpn import FPN
from mtcp.models.heads import TaskHead
from mtcp.models.task_decoder import TaskDecoder

TASKS = {"semseg": 5, "depth": 1, "normals": 3}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_attention_with_a_narrower_value_equals_the_materialised_form():
    """The authors' wide CFM: Q, K of width 2D, V of width D; V is zero-padded for the saving kernel."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 16, 5, 6, dtype=torch.float64), torch.randn(2, 16, 5, 6, dtype=torch.float64), \
        torch.randn(2, 8, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(spatial_attention(q, k, v, 1.0), naive_spatial_attention(q, k, v, 1.0))
    with pytest.raises(ValueError, match=r"Q and K of one width, at least V's"):
        spatial_attention(q[:, :4], k[:, :4], v, 1.0)


def test_the_wide_cfm_fusion_keeps_every_auxiliary_channel_and_rectifies():
    cfm = CoherenceFusion(8, 2, "none", fusion="wide_relu")
    assert cfm.query[0].channel.fc1.in_channels == 16  # Q and K are (T-1) D = 16 wide
    fused = cfm.fuse(torch.randn(1, 16, 4, 4))
    assert fused.shape[1] == 16 and fused.min() >= 0  # ReLU
    assert cfm(torch.randn(2, 8, 4, 5), [torch.randn(2, 8, 4, 5)] * 2).shape == (2, 8, 4, 5)
    linear = CoherenceFusion(8, 2)
    assert linear.fuse(torch.randn(1, 16, 4, 4)).shape[1] == 8 and linear.fuse(torch.randn(1, 16, 4, 4)).min() < 0
    with pytest.raises(ValueError, match=r"cfm_fusion: 'wide'; choose one of \['linear', 'wide_relu'\]"):
        CoherenceFusion(8, 2, fusion="wide")


def test_stage_norms_normalise_the_outputs_and_leave_the_next_stage_alone():
    torch.manual_seed(0)
    plain = TaskDecoder(16, (1, 1, 1), 2, 7)
    normed = TaskDecoder(16, (1, 1, 1), 2, 7, stage_norm=True)
    missing, unexpected = normed.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("norms.") for k in missing)
    shared = torch.randn(2, 16, 14, 21)
    _, raw = plain(shared)
    _, stages = normed(shared)
    for r, s in zip(raw, stages, strict=True):  # a fresh LayerNorm: standardise each pixel over channels
        expected = (r - r.mean(1, keepdim=True)) / torch.sqrt(r.var(1, unbiased=False, keepdim=True) + 1e-5)
        torch.testing.assert_close(s, expected, atol=1e-4, rtol=1e-4)


def test_the_plain_fpn_output_is_a_bare_3x3_convolution():
    fpn = FPN([8, 16], 8, num_outputs=1, output="conv")
    assert count(fpn.outputs) == 8 * 8 * 9 + 8
    out = fpn([torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4)])[0]
    assert out.min() < 0  # no ReLU: P and X_t may be negative, as in the authors' code
    assert FPN([8, 16], 8, num_outputs=1)([torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4)])[0].min() >= 0
    with pytest.raises(ValueError, match=r"FPN output 'bn'"):
        FPN([8], 8, output="bn")


def test_a_1x1_head_predicts_each_pixel_from_that_pixel_only():
    head = TaskHead(8, 3, kernel=1).eval()
    x = torch.randn(1, 8, 6, 6)
    y = x.clone()
    y[..., 2, 3] += 5.0
    changed = (head(x, (6, 6)) - head(y, (6, 6))).abs().sum(1)[0] > 1e-6
    assert changed[2, 3] and changed.sum() == 1
    wide = TaskHead(8, 3, kernel=3).eval()
    assert ((wide(x, (6, 6)) - wide(y, (6, 6))).abs().sum(1)[0] > 1e-6).sum() == 9
    with pytest.raises(ValueError, match=r"head_kernel must be 1 or 3"):
        TaskHead(8, 3, kernel=5)


def test_without_the_initial_head_only_srm1_and_srm2_are_supervised():
    net = MTCPNet(TASKS, TimmBackbone("test_convnext"), dim=16, num_queries=4, query_heads=2, initial_head=False)
    out = net(torch.rand(1, 3, 64, 64))
    assert set(out.auxiliary) == {"srm1", "srm2"} and "initial" not in net.heads


def test_the_authors_normals_loss_is_the_mean_over_components():
    output = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    label = torch.zeros(1, 3, 2, 2)
    label[0, 1, 0, :] = 1.0  # two valid pixels at (0, 1, 0): squared distance 2 each; two invalid pixels
    assert losses.normals_mse(output, label).item() == pytest.approx(2.0)
    assert losses.normals_mse(output, label, per="element").item() == pytest.approx(2.0 / 3)
    with pytest.raises(ValueError, match=r"normals.per: 'pixel' or 'element'"):
        losses.normals_mse(output, label, per="pixels")


@pytest.mark.slow
def test_the_authors_preset_has_their_parameter_counts_where_the_parts_are_theirs():
    """Counts from the authors' constructors (docs/fidelity.md), less what their model builds but never trains."""
    pytest.importorskip("transformers")
    args = ["--config", str(ROOT / "configs/nyud_authors.yaml"),
            "--config", str(ROOT / "tests/fixtures/random_encoder.yaml"),  # offline: random weights
            "--data.source=mtcp.data.sources.procedural.ProceduralScenes", "--data.root=null"]
    with weights_from_checkpoint():
        net = cli_main(args, run=False).model.net
    # Mask2Former Swin-S (ADE20K): 68,757,537 with the 151-way class head (38,807) MT-CP never trains
    assert count(net.encoder) == 68_757_537 - (256 * 151 + 151)
    for task in net.tasks:
        decoder = net.task_decoders[task]
        # their task Swin: 23,372,616, of which the patch embedding (1,049,344) is built but skipped
        assert count(decoder.stages) + count(decoder.norms) == 23_372_616 - (256 * 256 * 16 + 256 + 2 * 256)
        # their FPN fusion: 2,229,760, of which two of the three output convolutions are never read
        assert count(decoder.fpn) == 2_229_760 - 2 * (256 * 256 * 9 + 256)
