"""Activation checkpointing of the MT-CP parts (same outputs, gradients, BN statistics); the CFM
attention's precision under autocast."""

import contextlib

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mtcp.models import MTCPNet, TimmBackbone
from mtcp.models.cfm import CoherenceFusion, naive_spatial_attention, spatial_attention
from mtcp.models.mtcp_net import ATTENTION_KERNELS, CHECKPOINT_PARTS, resolve_checkpointing

NYUD = {"semseg": 5, "depth": 1, "normals": 3}


def tiny(backbone: str = "test_convnext", **kwargs) -> MTCPNet:
    torch.manual_seed(0)
    kwargs = {"dim": 16, "num_queries": 4, "query_heads": 2, "query_ffn_dim": 32, **kwargs}
    return MTCPNet(NYUD, TimmBackbone(backbone), **kwargs)


def flat(outputs) -> dict[str, torch.Tensor]:
    levels = {"final": outputs.final, **outputs.auxiliary}
    return {f"{lv}/{t}": y for lv, preds in levels.items() for t, y in preds.items()}


def train_step(net: MTCPNet, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """One forward + backward of a loss that weighs every output (fixed random weights)."""
    out = flat(net(image))
    gen = torch.Generator().manual_seed(1)
    loss = sum((y * torch.randn(y.shape, generator=gen)).mean() for y in out.values())
    loss.backward()
    return {k: y.detach() for k, y in out.items()}


def calls(net: MTCPNet) -> dict[str, int]:
    """Counts the calls of each part: the shared ones, the first task's decoder, CFM, trace-back and final
    head (pre-hooks: a recomputation stops early)."""
    counts = dict.fromkeys(CHECKPOINT_PARTS, 0)
    first = net.tasks[0]
    for part in CHECKPOINT_PARTS:
        module = getattr(net, part)
        if part == "heads":
            module = module["final"]
        if isinstance(module, nn.ModuleDict):
            module = module[first]
        module.register_forward_pre_hook(lambda *_, p=part: counts.__setitem__(p, counts[p] + 1))
    return counts


def test_checkpointing_names_resolve():
    assert resolve_checkpointing(False) == resolve_checkpointing(None) == frozenset()
    assert resolve_checkpointing(True) == {"backbone", "pixel_decoder", "query_decoder", "task_decoders", "cfm",
                                           "trace_back", "heads"}
    assert resolve_checkpointing(["cfm"]) == resolve_checkpointing("cfm") == {"cfm"}
    with pytest.raises(ValueError, match=r"model.net.checkpointing: unknown part\(s\) \['loss'\]"):
        tiny(checkpointing=["cfm", "loss"])


def test_checkpointing_parts_the_network_lacks_are_refused_by_name_and_left_out_of_true():
    with pytest.raises(ValueError, match=r"model.net.checkpointing: \['query_decoder'\] not built"):
        tiny(use_query_decoder=False, checkpointing=["query_decoder", "cfm"])
    assert tiny(use_query_decoder=False, use_cfm=False, checkpointing=True).checkpointing == {
        "backbone", "pixel_decoder", "task_decoders", "trace_back", "heads"}


# test_resnet: a backbone with BatchNorms, whose statistics the recomputation must not update twice
@pytest.mark.parametrize(("parts", "backbone", "recompute_attention"), [
    (True, "test_convnext", False), (True, "test_convnext", True), (["cfm"], "test_convnext", False),
    (["backbone", "pixel_decoder"], "test_resnet", False), (["query_decoder", "heads"], "test_convnext", False)])
def test_checkpointing_gives_the_plain_outputs_gradients_and_bn_statistics(parts, backbone, recompute_attention):
    image = torch.rand(2, 3, 64, 64)
    plain = tiny(backbone).train()
    ckpt = tiny(backbone, checkpointing=parts, recompute_attention=recompute_attention).train()
    ckpt.load_state_dict(plain.state_dict())
    counts = calls(ckpt)
    expected, got = train_step(plain, image), train_step(ckpt, image)
    checkpointed = resolve_checkpointing(parts)
    assert counts == {p: 2 if p in checkpointed else 1 for p in CHECKPOINT_PARTS}  # recomputed in backward
    for name, y in expected.items():
        torch.testing.assert_close(got[name], y, rtol=1e-6, atol=1e-7, msg=name)
    grads = dict(plain.named_parameters())
    for name, p in ckpt.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-6, atol=1e-7, msg=name)
    # running statistics and num_batches_tracked: updated once, as without checkpointing
    buffers = dict(plain.named_buffers())
    for name, b in ckpt.named_buffers():
        torch.testing.assert_close(b, buffers[name], rtol=1e-6, atol=1e-7, msg=name)


class AttentionKernelCalls(TorchDispatchMode):
    """Counts the calls of the fused attention kernels (the forward ones, not their backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in ATTENTION_KERNELS
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("recompute_attention", [False, True])
def test_checkpointed_parts_keep_their_attention_from_the_forward_unless_told_to_recompute_it(
        recompute_attention):
    net = tiny(checkpointing=True, recompute_attention=recompute_attention).train()
    with AttentionKernelCalls() as forward:
        out = flat(net(torch.rand(2, 3, 64, 64)))
    loss = sum(y.mean() for y in out.values())
    with AttentionKernelCalls() as backward:
        loss.backward()
    assert forward.count >= 3  # one CFM per task (the query decoder's attention may add more)
    assert backward.count == (forward.count if recompute_attention else 0)


def test_the_plain_recomputation_would_update_bn_statistics_twice(monkeypatch):
    """Why the recomputation freezes the BN buffers: without it a checkpointed BN counts two batches."""
    monkeypatch.setattr("mtcp.models.mtcp_net.frozen_batchnorm_stats", lambda _: contextlib.nullcontext())
    net = tiny(checkpointing=["cfm"]).train()
    train_step(net, torch.rand(2, 3, 64, 64))
    tracked = {n: int(b) for n, b in net.named_buffers() if n.endswith("num_batches_tracked")}
    assert {n: c for n, c in tracked.items() if n.startswith("cfm.")} and all(
        c == 2 for n, c in tracked.items() if n.startswith("cfm.")
    )
    assert all(c == 1 for n, c in tracked.items() if not n.startswith("cfm."))


def test_no_checkpointing_in_eval_or_without_grad():
    net = tiny(checkpointing=True)
    counts = calls(net)
    with torch.no_grad():
        net.train()(torch.rand(1, 3, 64, 64))
    net.eval()(torch.rand(1, 3, 64, 64)).final["depth"].sum().backward()
    assert counts == dict.fromkeys(CHECKPOINT_PARTS, 2)  # two forwards, no recomputation


def _bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).float()  # values a bf16 network hands on


@pytest.mark.parametrize("scale", [0.25, 1.0])
def test_cfm_attention_runs_in_fp32_under_bf16_autocast(scale):
    """Under CPU bf16 autocast the attention equals the fp32 computation (and bf16 would not)."""
    torch.manual_seed(0)
    q, k = (_bf16(torch.randn(2, 16, 6, 8).relu() * 3) for _ in range(2))
    v = _bf16(torch.randn(2, 16, 6, 8))
    reference = naive_spatial_attention(q.double(), k.double(), v.double(), scale).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = spatial_attention(q, k, v, scale)
        out_bf16 = spatial_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), scale)
        lowered = torch.nn.functional.scaled_dot_product_attention(  # what autocast alone computes
            *(x.flatten(2).transpose(1, 2).unsqueeze(1).contiguous() for x in (q, k, v)), scale=scale
        )
    lowered = lowered.squeeze(1).transpose(1, 2).reshape(v.shape).float()
    assert out.dtype == torch.float32 and out_bf16.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_bf16.float(), reference, rtol=1e-2, atol=1e-2)  # rounded to bf16 at the end only
    error, lowered_error = (out - reference).abs().max(), (lowered - reference).abs().max()
    assert lowered_error > 100 * error, (float(lowered_error), float(error))


@pytest.mark.parametrize(("scale", "fusion", "precision", "kernel_dtype"), [
    (None, "linear", "auto", torch.bfloat16),  # the standard 1/sqrt(D) scale: bf16 is safe (next test)
    ("none", "linear", "auto", torch.float32),  # the authors' unscaled softmax: fp32
    (None, "wide_relu", "auto", torch.float32),  # 1/sqrt(D) over 2D-wide Q/K: larger logits, fp32
    (None, "linear", "fp32", torch.float32),
    ("none", "linear", "autocast", torch.bfloat16),
])
def test_cfm_module_under_bf16_autocast_runs_its_attention_in_the_chosen_precision(
        monkeypatch, scale, fusion, precision, kernel_dtype):
    torch.manual_seed(0)
    cfm = CoherenceFusion(16, 2, scale, fusion, precision).train()
    own, aux = torch.randn(2, 16, 6, 8), [torch.randn(2, 16, 6, 8) for _ in range(2)]
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cfm(own, aux)
    out.float().sum().backward()
    assert seen == [(kernel_dtype,) * 3]
    assert torch.isfinite(out).all() and all(torch.isfinite(p.grad).all() for p in cfm.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fp32_out = CoherenceFusion(16, 2, scale, fusion, "fp32").train().requires_grad_(False)
        fp32_out.load_state_dict(cfm.state_dict())
        fp32_out = fp32_out(own, aux)
    if kernel_dtype == torch.float32:
        torch.testing.assert_close(out, fp32_out, rtol=0, atol=0)
    else:
        assert not torch.equal(out, fp32_out)
    with pytest.raises(ValueError, match="attention_precision: 'bf16'; choose one of"):
        CoherenceFusion(16, 2, precision="bf16")


def test_cfm_attention_in_bf16_with_the_standard_scale_is_as_accurate_as_a_bf16_matmul():
    """D = 64, 320 positions, batch-normalised ReLU features as the CFM's Q/K branches make them,
    scale 1/sqrt(D), under CPU bf16 autocast. Measured (torch 2.14, CPU): mean error 0.22 % and
    largest 1.6 % of the output's standard deviation (D = 256 at 60x80 alike), about the bf16
    rounding of the inputs. Bounds: 1 % mean, 5 % max."""
    torch.manual_seed(0)
    d, scale = 64, 64 ** -0.5

    def features(shift: torch.Tensor) -> torch.Tensor:
        x = torch.randn(2, d, 16, 20) + shift
        return _bf16((x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True))

    q, k = features(torch.randn(1, d, 1, 1)).relu(), features(torch.randn(1, d, 1, 1)).relu()
    v = features(torch.zeros(1))
    reference = naive_spatial_attention(q.double(), k.double(), v.double(), scale)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = spatial_attention(q, k, v, scale, fp32=False)
    error = (out.double() - reference).abs() / reference.std()
    assert 0 < error.mean() < 0.01 and error.max() < 0.05, (float(error.mean()), float(error.max()))


def test_checkpointing_under_bf16_autocast_equals_the_plain_network():
    image = torch.rand(1, 3, 64, 64)
    plain, ckpt = tiny().train(), tiny(checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = flat(plain(image)), flat(ckpt(image))
    sum(y.float().sum() for y in expected.values()).backward()
    sum(y.float().sum() for y in got.values()).backward()
    for name, y in expected.items():
        torch.testing.assert_close(got[name], y, rtol=1e-6, atol=1e-7, msg=name)
    grads = dict(plain.named_parameters())
    for name, p in ckpt.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-6, atol=1e-7, msg=name)


def test_frozen_batchnorm_stats_keeps_the_buffers():
    from mtcp.models.mtcp_net import frozen_batchnorm_stats

    bn = nn.BatchNorm2d(3).train()
    originals = [bn.running_mean, bn.running_var, bn.num_batches_tracked]
    with frozen_batchnorm_stats(nn.Sequential(bn)):
        bn(torch.randn(2, 3, 4, 4) + 5)
        assert int(bn.num_batches_tracked) == 1
    now = [bn.running_mean, bn.running_var, bn.num_batches_tracked]
    assert all(a is b for a, b in zip(now, originals, strict=True))  # the same objects
    assert int(bn.num_batches_tracked) == 0 and torch.equal(bn.running_mean, torch.zeros(3))
    assert torch.equal(bn.running_var, torch.ones(3))
    assert set(dict(bn.named_buffers())) == {"running_mean", "running_var", "num_batches_tracked"}


def test_checkpointing_under_torch_compile_gives_the_plain_outputs_gradients_and_bn_statistics():
    """Dynamo traces a checkpointed part into the graph (its own recomputation, BN buffers updated
    once; the attention kept through the policy in a form Dynamo accepts). aot_eager: Dynamo's capture
    and AOTAutograd's split, with eager kernels (about 30 s of tracing)."""
    torch._dynamo.reset()
    image = torch.rand(2, 3, 64, 64)
    plain = tiny("test_resnet").train()
    ckpt = tiny("test_resnet", checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.compile(backend="aot_eager")
    expected, got = train_step(plain, image), train_step(ckpt, image)
    for name, y in expected.items():
        torch.testing.assert_close(got[name], y, rtol=1e-5, atol=1e-6, msg=name)
    grads = dict(plain.named_parameters())
    for name, p in ckpt.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    buffers = dict(plain.named_buffers())
    for name, b in ckpt.named_buffers():
        torch.testing.assert_close(b, buffers[name], rtol=1e-5, atol=1e-6, msg=name)
