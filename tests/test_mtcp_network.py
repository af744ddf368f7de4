"""The MT-CP network: shapes at the paper's strides, the CFM's attention, gradients, ablations, backbones."""

from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mtcp.bench import load_network_factory, random_batch
from mtcp.bench import main as bench_main
from mtcp.models import MTCPNet, TimmBackbone
from mtcp.models.cbam import CBAM
from mtcp.models.cfm import CoherenceFusion, naive_spatial_attention, resolve_scale, spatial_attention
from mtcp.models.query_decoder import fuse
from mtcp.models.task_decoder import PaddedSwinStage
from mtcp.module import MultiTaskModule

ROOT = Path(__file__).resolve().parents[1]
NYUD = {"semseg": 40, "depth": 1, "normals": 3}
PASCAL = {"semseg": 21, "human_parts": 7, "sal": 1}
LEVELS = ["final", "initial", "srm1", "srm2"]


def tiny(task_channels, backbone="test_convnext", **kwargs) -> MTCPNet:
    torch.manual_seed(0)
    kwargs = {"dim": 16, "num_queries": 4, "query_heads": 2, "query_ffn_dim": 32, **kwargs}
    return MTCPNet(task_channels, TimmBackbone(backbone), **kwargs)


def shapes(outputs):
    return {level: {t: tuple(y.shape) for t, y in preds.items()} for level, preds in outputs.items()}


def test_nyud_shapes_at_the_paper_strides():
    """96x128 stands in for 480x640: R at 1/4, task stages and trace-back at 1/4, 1/8, 1/16."""
    net, d, b = tiny(NYUD), 16, 2
    image = torch.rand(b, 3, 96, 128)
    feats = net.forward_features(image)
    assert feats["P"].shape == feats["R"].shape == (b, d, 24, 32)
    assert feats["M"].shape == (b, 4, d) and feats["mask_logits"].shape == (b, 4, 24, 32)
    for t in NYUD:
        assert [tuple(s.shape) for s in feats["S"][t]] == [
            (b, d, 24, 32),
            (b, 2 * d, 12, 16),
            (b, 4 * d, 6, 8),
        ]
        assert feats["X"][t].shape == feats["C"][t].shape == (b, d, 24, 32)
        assert [tuple(s.shape) for s in feats["trace"][t]] == [(b, d, 6, 8), (b, d, 12, 16), (b, d, 24, 32)]
    out = net(image)
    assert list(out) == LEVELS
    assert shapes(out) == {lv: {t: (b, c, 96, 128) for t, c in NYUD.items()} for lv in LEVELS}
    assert (out["final"]["depth"] > 0).all()
    assert torch.allclose(out["final"]["normals"].norm(dim=1), torch.ones(b, 96, 128), atol=1e-4)


def test_pascal_shapes():
    net = tiny(PASCAL)
    out = net(torch.rand(1, 3, 64, 64))
    assert shapes(out) == {lv: {t: (1, c, 64, 64) for t, c in PASCAL.items()} for lv in LEVELS}
    assert net.forward_features(torch.rand(1, 3, 64, 64))["R"].shape == (1, 16, 16, 16)


@pytest.mark.parametrize("size", [(100, 140), (33, 47)])
def test_odd_input_sizes_give_outputs_of_the_input_size(size):
    out = tiny(NYUD).eval()(torch.rand(1, 3, *size))
    assert shapes(out) == {lv: {t: (1, c, *size) for t, c in NYUD.items()} for lv in LEVELS}


@pytest.mark.parametrize("scale", [None, "none"])
def test_cfm_attention_equals_the_materialised_softmax(scale):
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 16, 5, 7).relu().unbind(1)[:2]
    v = torch.randn(2, 16, 5, 7)
    s = resolve_scale(scale, 16)
    assert s == (0.25 if scale is None else 1.0)
    assert torch.allclose(spatial_attention(q, k, v, s), naive_spatial_attention(q, k, v, s), atol=1e-5)


@pytest.mark.parametrize("scale", [None, "none"])
def test_cfm_module_equals_its_materialised_form(scale, monkeypatch):
    torch.manual_seed(0)
    cfm = CoherenceFusion(16, 2, scale).eval()
    own, aux = torch.randn(2, 16, 6, 8), [torch.randn(2, 16, 6, 8) for _ in range(2)]
    efficient = cfm(own, aux)
    monkeypatch.setattr("mtcp.models.cfm.spatial_attention", naive_spatial_attention)
    assert torch.allclose(efficient, cfm(own, aux), atol=1e-5)


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


def test_cfm_takes_the_memory_saving_kernel_on_the_cpu():
    """Equal Q/K/V widths and contiguous inputs: the flash kernel runs (no HW x HW affinity)."""
    cfm = CoherenceFusion(16, 1)
    own, aux = torch.randn(1, 16, 6, 8), torch.randn(1, 16, 6, 8)
    with _Ops() as ops:
        cfm(own, [aux]).sum().backward()
    assert any("_scaled_dot_product_flash_attention_for_cpu." in n for n in ops.names), sorted(ops.names)
    assert any("_scaled_dot_product_flash_attention_for_cpu_backward" in n for n in ops.names)


def test_fusion_forms():
    torch.manual_seed(0)
    p, m, logits = torch.randn(2, 8, 5, 6), torch.randn(2, 4, 8), torch.randn(2, 4, 5, 6)
    reference = fuse(p, m, logits, "reference")
    assert torch.allclose(reference, torch.einsum("bnhw,bdhw->bdhw", logits, p), atol=1e-5)
    query = fuse(p, m, logits, "query")
    by_hand = p + p * torch.einsum("bnhw,bnd->bdhw", logits.softmax(dim=1), m)
    assert torch.allclose(query, by_hand, atol=1e-6)
    assert not torch.allclose(query, reference, atol=1e-2)
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse(p, m, logits, "sum")


ABLATIONS = {
    "full": (NYUD, {}),
    "reference_fusion": (NYUD, {"fusion": "reference"}),
    "authors_scale": (NYUD, {"attention_scale": "none"}),
    "no_query_decoder": (NYUD, {"use_query_decoder": False}),
    "no_cfm": (NYUD, {"use_cfm": False}),
    "no_trace_back": (NYUD, {"use_trace_back": False}),
    "nothing": (NYUD, {"use_query_decoder": False, "use_cfm": False, "use_trace_back": False}),
    "one_query_layer": (NYUD, {"query_layers": 1}),
    "single_task": ({"depth": 1}, {}),
    "pascal": (PASCAL, {}),
}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_every_parameter_gets_a_gradient(name):
    """One training step reaches every parameter: DDP with find_unused_parameters=False works."""
    channels, kwargs = ABLATIONS[name]
    net = tiny(channels, **kwargs).train()
    batch = random_batch(channels, 2, 64, 64, torch.device("cpu"))
    out = net(batch["image"])
    expected = LEVELS if kwargs.get("use_trace_back", True) else ["final"]
    assert list(out) == expected
    MultiTaskModule(channels, net=lambda _: net).task_losses(out, batch).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing


def test_zero_deep_supervision_weight_keeps_every_parameter_in_the_graph():
    """Weight 0 switches the intermediate losses off without leaving heads gradient-less (DDP)."""
    net = tiny(NYUD).train()
    batch = random_batch(NYUD, 2, 64, 64, torch.device("cpu"))
    module = MultiTaskModule(NYUD, net=lambda _: net, deep_supervision_weight=0.0)
    out = net(batch["image"])
    losses = module.task_losses(out, batch)
    final_only = torch.stack([module.loss_fns[t](out["final"][t], batch[t]) for t in NYUD])
    assert torch.allclose(losses, final_only)
    losses.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert all(float(p.grad.abs().sum()) == 0 for n, p in net.named_parameters() if n.startswith("heads.srm1."))


def test_ablation_modules_are_absent():
    assert tiny(NYUD, use_query_decoder=False).query_decoder is None
    assert tiny(NYUD, use_cfm=False).cfm is None
    assert tiny({"depth": 1}).cfm is None  # no other task to be coherent with: C = X
    assert tiny(NYUD, use_trace_back=False).trace_back is None
    with pytest.raises(ValueError, match="fusion"):
        tiny(NYUD, fusion="sum")
    with pytest.raises(ValueError, match="scale"):
        tiny(NYUD, attention_scale="sqrt")


def test_padded_swin_stage_equals_timm_on_window_multiples():
    """Padding before the blocks keeps timm's shifted-window semantics where no padding is needed."""
    from timm.models.swin_transformer import SwinTransformerStage

    torch.manual_seed(0)
    padded = PaddedSwinStage(8, 8, depth=2, heads=2, window=7, downsample=False)
    static = SwinTransformerStage(8, 8, (14, 21), 2, downsample=False, num_heads=2, window_size=7)
    static.load_state_dict(padded.stage.state_dict())
    x = torch.randn(1, 14, 21, 8)
    assert torch.allclose(padded(x), static(x), atol=1e-6)
    assert padded(torch.randn(1, 5, 9, 8)).shape == (1, 5, 9, 8)


def test_cbam_is_channel_then_spatial_gate():
    torch.manual_seed(0)
    cbam = CBAM(32)
    x = torch.randn(2, 32, 5, 6)
    fc1, fc2 = cbam.channel.fc1, cbam.channel.fc2
    assert fc1.out_channels == 2  # reduction 16

    def mlp(z):
        return fc2(torch.relu(fc1(z)))

    y = x * torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
    y = y * torch.sigmoid(cbam.spatial.conv(torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1)))
    assert torch.allclose(cbam(x), y, atol=1e-6)


def test_plain_vit_backbone():
    net = tiny(PASCAL, backbone="test_vit")
    out = net(torch.rand(1, 3, 50, 70))
    assert shapes(out)["final"] == {t: (1, c, 50, 70) for t, c in PASCAL.items()}


def test_swin_backbone():
    torch.manual_seed(0)
    backbone = TimmBackbone(
        "swin_tiny_patch4_window7_224",
        img_size=(64, 96),
        model_kwargs=dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)),
    )
    net = MTCPNet(NYUD, backbone, dim=16, num_queries=4, query_heads=2, query_ffn_dim=32)
    out = net(torch.rand(1, 3, 50, 70))  # padded to 64x96, the backbone's img_size
    assert shapes(out)["final"] == {t: (1, c, 50, 70) for t, c in NYUD.items()}


def test_model_configs_build_the_networks():
    factory, _ = load_network_factory(
        [str(ROOT / "configs/procedural.yaml"), str(ROOT / "configs/model/mtcp_tiny.yaml")],
        ["backbone.init_args.name=test_convnext"],
    )
    net = factory(NYUD)
    assert isinstance(net, MTCPNet) and net.pixel_decoder.outputs[0][0].out_channels == 64
    assert net.query_decoder.query_feat.num_embeddings == 16
    factory, _ = load_network_factory(
        [str(ROOT / "configs/model/mtcp_tiny.yaml"), str(ROOT / "configs/model/plain_tiny.yaml")], []
    )
    assert type(factory(NYUD)).__name__ == "PlainMTL"


def test_bench_smoke(capsys):
    results = bench_main(
        [
            "--config",
            str(ROOT / "configs/model/mtcp_tiny.yaml"),
            "--tasks",
            "semseg,depth",
            "--num-classes",
            "semseg=5",
            "--net-arg",
            "backbone.init_args.name=test_convnext",
            "--net-arg",
            "dim=16",
            "--net-arg",
            "query_heads=2",
            "--height",
            "40",
            "--width",
            "56",
            "--batch-size",
            "2",
            "--warmup",
            "0",
            "--repeats",
            "1",
        ]
    )
    text = capsys.readouterr().out
    for group in (
        "backbone",
        "pixel_decoder",
        "query_decoder",
        "task_decoders",
        "cfm",
        "trace_back",
        "heads",
    ):
        assert group in text and results["params"][group] > 0 and results["flops"][group] > 0
    assert results["train_ips"] > 0 and results["infer_ips"] > 0


def test_bad_network_settings_name_the_setting():
    from mtcp.models import MTCPNet, TimmBackbone

    with pytest.raises(ValueError, match=r"model.net.dim=30 must be a multiple of 4, of query_heads=8"):
        MTCPNet({"semseg": 3, "depth": 1}, TimmBackbone("test_convnext"), dim=30, query_heads=8)
    with pytest.raises(ValueError, match=r"does not accept \['img_size'\].*img_size is for Swin/ViT"):
        TimmBackbone("resnet18", img_size=(64, 64))
