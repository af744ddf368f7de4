"""The MT-CP network: shapes at the paper's strides, the CFM's attention, gradients, ablations, backbones."""

import inspect
import math

import pytest
import torch
from timm.models.swin_transformer import SwinTransformerBlock, SwinTransformerStage
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import ROOT  # noqa: E402
from mtcp.bench import random_batch
from mtcp.cli import cli_main
from mtcp.models import MTCPNet, Predictions, TimmBackbone
from mtcp.models.cbam import CBAM, SpatialGate
from mtcp.models.cfm import CoherenceFusion, naive_spatial_attention, resolve_scale, spatial_attention
from mtcp.models.query_decoder import fuse
from mtcp.models.task_decoder import PaddedSwinStage
from mtcp.module import MultiTaskModule

NYUD = {"semseg": 40, "depth": 1, "normals": 3}
PASCAL = {"semseg": 21, "human_parts": 7, "sal": 1}
AUXILIARY = ["initial", "srm1", "srm2"]
LEVELS = ["final", *AUXILIARY]


def tiny(task_channels, backbone="test_convnext", **kwargs) -> MTCPNet:
    torch.manual_seed(0)
    kwargs = {"dim": 16, "num_queries": 4, "query_heads": 2, "query_ffn_dim": 32, **kwargs}
    return MTCPNet(task_channels, TimmBackbone(backbone), **kwargs)


def shapes(outputs: Predictions) -> dict[str, dict[str, tuple[int, ...]]]:
    """Shapes per level (the final prediction as ``final``) and task."""
    levels = {"final": outputs.final, **outputs.auxiliary}
    return {level: {t: tuple(y.shape) for t, y in preds.items()} for level, preds in levels.items()}


def test_nyud_shapes_at_the_paper_strides():
    """96x128 stands in for 480x640: R at 1/4, task stages and trace-back at 1/4, 1/8, 1/16."""
    net, d, b = tiny(NYUD), 16, 2
    image = torch.rand(b, 3, 96, 128)
    feats = net.forward_features(image)
    assert feats.pixels.shape == feats.shared.shape == (b, d, 24, 32)
    assert feats.queries.shape == (b, 4, d) and feats.mask_logits.shape == (b, 4, 24, 32)
    for t in NYUD:
        assert [tuple(s.shape) for s in feats.stages[t]] == [
            (b, d, 24, 32),
            (b, 2 * d, 12, 16),
            (b, 4 * d, 6, 8),
        ]
        assert feats.decoded[t].shape == feats.fused[t].shape == (b, d, 24, 32)
        assert [tuple(s.shape) for s in feats.trace[t]] == [(b, d, 6, 8), (b, d, 12, 16), (b, d, 24, 32)]
    out = net(image)
    assert list(out.auxiliary) == AUXILIARY
    assert shapes(out) == {lv: {t: (b, c, 96, 128) for t, c in NYUD.items()} for lv in LEVELS}
    activated = MultiTaskModule(NYUD, net=lambda _: net)(image).final  # the tasks' activations, in the module
    assert (activated["depth"] > 0).all()
    assert torch.allclose(activated["normals"].norm(dim=1), torch.ones(b, 96, 128), atol=1e-4)


def test_pascal_shapes():
    net = tiny(PASCAL)
    out = net(torch.rand(1, 3, 64, 64))
    assert shapes(out) == {lv: {t: (1, c, 64, 64) for t, c in PASCAL.items()} for lv in LEVELS}
    assert net.forward_features(torch.rand(1, 3, 64, 64)).shared.shape == (1, 16, 16, 16)


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
    monkeypatch.setattr("mtcp.models.cfm.spatial_attention",
                        lambda q, k, v, scale, fp32: naive_spatial_attention(q, k, v, scale))
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
    """Hand-computed R on a 1x2 map (N = D = 2), both forms.

    P(0,0) = (1, 2), P(0,1) = (3, -1); query embeddings M_0 = (1, -1), M_1 = (3, 1).
    ``query``: pixel (0,0) has logits (ln 3, 0), softmax over the queries (3/4, 1/4),
    mix = 3/4 M_0 + 1/4 M_1 = (3/2, -1/2), R = P + P * mix = (1 + 3/2, 2 - 1) = (5/2, 1);
    pixel (0,1) has logits (ln 2, ln 2), softmax (1/2, 1/2), mix = (2, 0), R = (3 + 6, -1 + 0) = (9, -1).
    ``reference``: R = P * (sum of the logits) = (ln 3, 2 ln 3) and (3 ln 4, -ln 4).
    """
    ln2, ln3 = math.log(2.0), math.log(3.0)
    p = torch.tensor([[1.0, 3.0], [2.0, -1.0]]).view(1, 2, 1, 2)  # [B, D, H, W]
    m = torch.tensor([[[1.0, -1.0], [3.0, 1.0]]])  # [B, N, D]
    logits = torch.tensor([[ln3, ln2], [0.0, ln2]]).view(1, 2, 1, 2)  # [B, N, H, W]
    query = torch.tensor([[2.5, 9.0], [1.0, -1.0]]).view(1, 2, 1, 2)
    reference = torch.tensor([[ln3, 3 * 2 * ln2], [2 * ln3, -2 * ln2]]).view(1, 2, 1, 2)
    torch.testing.assert_close(fuse(p, m, logits, "query"), query)
    torch.testing.assert_close(fuse(p, m, logits, "reference"), reference)
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse(p, m, logits, "sum")


def test_fusion_forms_by_explicit_loops():
    """Unequal B, N, D, H, W (a transposed or misplaced axis shows), against scalar loops."""
    torch.manual_seed(0)
    b, n, d, h, w = 2, 3, 4, 2, 5
    p, m, logits = torch.randn(b, d, h, w), torch.randn(b, n, d), 3 * torch.randn(b, n, h, w)
    query, reference = torch.zeros(b, d, h, w), torch.zeros(b, d, h, w)
    for bi in range(b):
        for y in range(h):
            for x in range(w):
                exps = [math.exp(float(logits[bi, k, y, x])) for k in range(n)]
                total = sum(float(logits[bi, k, y, x]) for k in range(n))
                for c in range(d):
                    mix = sum(exps[k] / sum(exps) * float(m[bi, k, c]) for k in range(n))
                    query[bi, c, y, x] = float(p[bi, c, y, x]) * (1.0 + mix)
                    reference[bi, c, y, x] = float(p[bi, c, y, x]) * total
    torch.testing.assert_close(fuse(p, m, logits, "query"), query, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fuse(p, m, logits, "reference"), reference, atol=1e-5, rtol=1e-5)


def constant_spatial_gates(cfm: CoherenceFusion) -> CoherenceFusion:
    """Zero the 7x7 kernels of every CBAM spatial gate (the gate becomes a constant sigmoid(bias)).

    With zero padding those kernels make a spatially constant map vary at the borders;
    without them every CFM branch maps a spatially constant map to a spatially constant map.
    """
    for module in cfm.modules():
        if isinstance(module, SpatialGate):
            nn.init.zeros_(module.conv.weight)
    return cfm.eval()


def spatially_constant(b: int, c: int, h: int, w: int) -> torch.Tensor:
    return torch.randn(b, c, 1, 1).expand(b, c, h, w).contiguous()


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-4 * float(b.abs().max()), rtol=0)


def assert_differ(a: torch.Tensor, b: torch.Tensor) -> None:
    assert float((a - b).abs().max()) > 0.05 * float(b.abs().max())


@pytest.mark.parametrize("num_auxiliary", [1, 2])
def test_cfm_values_come_from_the_own_task_and_the_affinity_from_the_others(num_auxiliary):
    """C_t = out(softmax(Q(F) K(F)^T) V(X_t)), F from the auxiliary tasks only.

    - auxiliary maps spatially constant: Q and K are the same at every position, the
      attention is uniform, so C_t = out(mean over positions of V(X_t)), whatever X_t's layout;
    - X_t spatially constant: every value is the same vector, so C_t = out(V(X_t)) and
      does not depend on the auxiliary maps at all;
    - both varying: C_t changes with either.
    Values taken from an auxiliary task (or Q/K from X_t) break the first two.
    """
    torch.manual_seed(0)
    # a sharp softmax (scale 30) so that the affinity visibly matters at initialisation
    cfm = constant_spatial_gates(CoherenceFusion(16, num_auxiliary, scale=30.0))
    b, d, h, w = 2, 16, 5, 6
    own, other_own = torch.randn(b, d, h, w), torch.randn(b, d, h, w)
    flat_aux = [spatially_constant(b, d, h, w) for _ in range(num_auxiliary)]
    flat_own = spatially_constant(b, d, h, w)
    aux_a = [torch.randn(b, d, h, w) for _ in range(num_auxiliary)]
    aux_b = [torch.randn(b, d, h, w) for _ in range(num_auxiliary)]
    with torch.no_grad():
        out = cfm(own, flat_aux)
        assert_same(out, cfm.out(cfm.value(own).mean((2, 3), keepdim=True).expand(b, d, h, w)))
        assert_same(cfm(own[..., torch.randperm(w)], flat_aux), out)  # the layout of X_t does not matter
        assert_differ(cfm(other_own, flat_aux), out)

        out = cfm(flat_own, aux_a)
        assert_same(out, cfm.out(cfm.value(flat_own)))
        assert_same(cfm(flat_own, aux_b), out)

        assert_differ(cfm(own, aux_a), cfm(own, aux_b))
        assert_differ(cfm(own, aux_a), cfm(other_own, aux_a))


def test_each_task_cfm_gets_its_own_features_and_the_other_tasks_as_auxiliary():
    """MTCPNet's wiring: CFM_t receives X_t as its own input and [X_a for a != t] (task order)."""
    net = tiny(NYUD).eval()
    seen = {}
    for t in NYUD:
        net.cfm[t].register_forward_pre_hook(lambda _m, args, t=t: seen.__setitem__(t, args))
    with torch.no_grad():
        feats = net.forward_features(torch.rand(1, 3, 64, 64))
    x = feats.decoded
    assert not any(torch.equal(x[a], x[t]) for a in NYUD for t in NYUD if a != t)  # the maps tell the tasks apart
    for t in NYUD:
        own, auxiliary = seen[t]
        assert torch.equal(own, x[t]), t
        others = [a for a in NYUD if a != t]
        assert len(auxiliary) == len(others), t
        assert all(torch.equal(m, x[a]) for m, a in zip(auxiliary, others, strict=True)), t


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
    module = MultiTaskModule(channels, net=lambda _: net)
    out = module(batch["image"])
    expected = AUXILIARY if kwargs.get("use_trace_back", True) else []
    assert list(out.auxiliary) == expected
    module.task_losses(out, batch).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing


def test_zero_deep_supervision_weight_keeps_every_parameter_in_the_graph():
    """Weight 0 switches the intermediate losses off without leaving heads gradient-less (DDP)."""
    net = tiny(NYUD).train()
    batch = random_batch(NYUD, 2, 64, 64, torch.device("cpu"))
    module = MultiTaskModule(NYUD, net=lambda _: net, deep_supervision_weight=0.0)
    out = module(batch["image"])
    losses = module.task_losses(out, batch)
    final_only = torch.stack([module.loss_fns[t](out.final[t], batch[t]) for t in NYUD])
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
    torch.manual_seed(0)
    padded = PaddedSwinStage(8, 8, depth=2, heads=2, window=7, downsample=False)
    static = SwinTransformerStage(8, 8, (14, 21), 2, downsample=False, num_heads=2, window_size=7)
    static.load_state_dict(padded.stage.state_dict())
    x = torch.randn(1, 14, 21, 8)
    assert torch.allclose(padded(x), static(x), atol=1e-6)


def pad_first_swin_stage(stage: PaddedSwinStage, x: torch.Tensor) -> torch.Tensor:
    """The original Swin's order on a map of any size, built from timm blocks at the padded size.

    Per block: LayerNorm, zero-pad bottom/right to a window multiple, then (timm's block
    sized for the padded map, so its cyclic shift and its precomputed shifted-window mask
    are those of the padded map, and it pads nothing further) window attention, crop,
    residual; the MLP runs on the real positions. Blocks alternate unshifted / shifted by
    half a window.
    """
    x = stage.stage.downsample(x)
    _, h, w, c = x.shape
    win = stage.window
    hp, wp = -(-h // win) * win, -(-w // win) * win
    for i, block in enumerate(stage.stage.blocks):
        ref = SwinTransformerBlock(
            c, (hp, wp), num_heads=block.attn.num_heads, window_size=win, shift_size=0 if i % 2 == 0 else win // 2,
            always_partition=True,
        )
        ref.load_state_dict(block.state_dict())
        assert (ref.attn_mask is None) == (i % 2 == 0)  # the shifted block masks the padded map's wrapped regions
        attn_in = torch.zeros(x.shape[0], hp, wp, c)
        attn_in[:, :h, :w] = ref.norm1(x)
        x = x + ref._attn(attn_in)[:, :h, :w]
        x = x + ref.mlp(ref.norm2(x))
    return x


def test_the_timm_swin_parts_padded_swin_stage_uses_exist():
    """`PadFirstSwinBlock` overrides timm's private `SwinTransformerBlock._attn`; pinned by timm<1.1.

    On a timm bump, this names what moved before any value test fails obscurely.
    """
    from mtcp.models.swin import PadFirstSwinBlock

    assert list(inspect.signature(SwinTransformerBlock._attn).parameters) == ["self", "x"]
    assert "self._attn(self.norm1(x))" in inspect.getsource(SwinTransformerBlock.forward)
    assert "self.downsample(x)" in inspect.getsource(SwinTransformerStage.forward)
    stage = PaddedSwinStage(8, 16, depth=2, heads=2, window=7, downsample=True)
    assert isinstance(stage.stage, SwinTransformerStage) and isinstance(stage.stage.downsample, nn.Module)
    assert all(type(block) is PadFirstSwinBlock for block in stage.stage.blocks)
    assert [block.window_size for block in stage.stage.blocks] == [(7, 7), (7, 7)]
    assert [block.shift_size for block in stage.stage.blocks] == [(0, 0), (3, 3)]


@pytest.mark.parametrize("size,downsample", [((5, 9), False), ((8, 10), False), ((10, 17), False), ((16, 20), True)])
def test_padded_swin_stage_pads_before_the_shift(size, downsample):
    """Maps that are not window multiples (8x10: the 1/16 map of a 120x160 image) match the pad-first Swin."""
    torch.manual_seed(0)
    stage = PaddedSwinStage(8, 16 if downsample else 8, depth=2, heads=2, window=7, downsample=downsample).eval()
    x = torch.randn(2, *size, 8)
    out = stage(x)
    expected = pad_first_swin_stage(stage, x)
    assert out.shape == expected.shape
    assert out.shape[1] % 7 and out.shape[2] % 7  # the case that needs padding
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


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
    base = ["--config", str(ROOT / "configs/procedural.yaml"),
            "--model.net.init_args.backbone.init_args.name=test_convnext"]
    net = cli_main([*base, "--config", str(ROOT / "configs/model/mtcp_tiny.yaml")], run=False).model.net
    assert isinstance(net, MTCPNet) and net.pixel_decoder.outputs[0][0].out_channels == 64
    assert net.query_decoder.query_feat.num_embeddings == 16
    stacked = ["--config", str(ROOT / "configs/model/mtcp_tiny.yaml"),
               "--config", str(ROOT / "configs/model/plain_tiny.yaml")]
    assert type(cli_main([*base, *stacked], run=False).model.net).__name__ == "PlainMTL"


def test_bench_is_a_subcommand_that_builds_the_network_like_fit(capsys):
    from mtcp.bench import run

    cli = cli_main(["--config", str(ROOT / "configs/procedural.yaml"),
                    "--config", str(ROOT / "configs/model/mtcp_tiny.yaml"), "--data.tasks=[semseg,depth]",
                    "--model.net.init_args.backbone.init_args.name=test_convnext",
                    "--model.net.init_args.dim=16", "--model.net.init_args.query_heads=2"], run=False)
    results = run(cli.model, torch.device("cpu"), height=40, width=56, batch_size=2, warmup=0, repeats=1)
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


def _tiny_swin(pad_before_shift: bool) -> "TimmBackbone":
    from mtcp.models import TimmBackbone

    torch.manual_seed(0)
    return TimmBackbone("swin_tiny_patch4_window7_224", img_size=(224, 224), pad_before_shift=pad_before_shift,
                        model_kwargs={"embed_dim": 12, "depths": (2, 2, 2, 2), "num_heads": (1, 1, 1, 1),
                                      "strict_img_size": False}).eval()


def test_swin_backbone_pads_before_the_shift_and_equals_timm_on_window_multiples():
    from mtcp.models.swin import PadFirstSwinBlock

    padded, plain = _tiny_swin(True), _tiny_swin(False)
    plain.load_state_dict(padded.state_dict())
    blocks = [m for m in padded.modules() if isinstance(m, SwinTransformerBlock)]
    assert len(blocks) == 8 and all(type(b) is PadFirstSwinBlock for b in blocks)
    assert not any(type(m) is PadFirstSwinBlock for m in plain.modules())
    # 224x224: maps 56, 28, 14, 7, all window multiples: the same network
    x = torch.rand(1, 3, 224, 224)
    for a, b in zip(padded(x), plain(x), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # 160x192: maps 40x48, 20x24, 10x12, 5x6, none a multiple of 7: the shifted windows differ
    x = torch.rand(1, 3, 160, 192)
    assert not torch.allclose(padded(x)[0], plain(x)[0], atol=1e-3)
