"""The MT-CP network (docs/method.md section 2): shared pixel map R, per-task decoders, trace-back.

    image -> backbone -> pixel decoder (FPN)      -> P @1/4 (+ 1/8, 1/16, 1/32 for the queries)
          -> query decoder                        -> M, mask logits;  R = fuse(P, M, mask logits)
      (or image -> encoder: Hugging Face's Mask2Former, the authors' choice, -> P, M, mask logits)
    per task t: task decoder(R)                   -> S_t = [D@1/4, 2D@1/8, 4D@1/16], X_t @1/4
    per task t: CFM_t(X_t, {X_a : a != t})        -> C_t        -> head "initial" (auxiliary)
    per task t: SRM chain over S_t seeded with C_t -> 1/16, 1/8, 1/4 -> heads "srm1", "srm2" (aux.), final

Ablations, each keeping every built parameter on the gradient path (DDP with
``find_unused_parameters=False``):

- ``use_query_decoder=False``: R = P (no queries; the pixel decoder keeps only P).
- ``use_cfm=False``: C_t = X_t, so the trace-back is seeded by X_t and "initial" is the
  head on X_t: a real prediction (the task decoder's own), and it keeps the set of
  supervised levels, hence the loss composition, the same as the full model's.
- ``use_trace_back=False``: the final head reads C_t; there are no auxiliary levels
  ("initial" would duplicate the final prediction).
- one task: there are no other tasks to be coherent with, so no CFM is built and
  C_t = X_t (as with ``use_cfm=False``); a self-attention stand-in would be a different
  module, not the ablated one.

Activation checkpointing (``checkpointing``): in training (``self.training`` and grad
enabled) the backbone, the pixel decoder, the query decoder, each task's decoder, each CFM
call, each trace-back chain and each head can run under
`torch.utils.checkpoint.checkpoint` (non-reentrant): their inner activations are not
kept but recomputed during the backward pass. Outputs and gradients are those of the
plain network (the recomputation is the same computation; the RNG state is restored,
though no part draws random numbers at the default settings). The recomputation runs
the parts' BatchNorms in training mode a second time, which would update their running
statistics (and ``num_batches_tracked``) twice per step (verified: each checkpointed BN
would count two batches). The recomputation therefore runs with the BN buffers swapped
for throw-away copies (`frozen_batchnorm_stats`): it normalises with the same batch
statistics and saves the same tensors, but leaves the real buffers alone, so after a
step the running statistics equal the plain network's too
(``tests/models/test_checkpointing.py``). Switching ``track_running_stats`` off instead
would not do: the BN op then saves fewer tensors and the checkpoint refuses the
recomputation.

The fused attention kernels are not recomputed (``recompute_attention=False``, the default): a
selective-checkpoint policy (`torch.utils.checkpoint.create_selective_checkpoint_contexts`) keeps
the outputs of `ATTENTION_KERNELS` from the forward and hands them to the recomputation. Their
outputs are small (the size of the queries, plus one log-sum-exp per query), their cost is not: the
CFM attention is 27 % of the paper configuration's forward FLOPs at 240x320 and 57 % at 480x640
(``mtcp bench``), all of it repeated by a plain recomputation. What is kept is what the
recomputation would produce, so outputs and gradients stay those of the plain network.

Under torch.compile (``model.compile``) Dynamo traces a checkpointed part into the compiled graph and
AOTAutograd does the recomputation itself, from the functional graph, so the BN buffers are updated
once without the swap; Dynamo accepts only a plain function or a `functools.partial` as
``context_fn``, so the policy is passed as `KEEP_ATTENTION_CONTEXTS`
(``tests/models/test_checkpointing.py`` checks outputs, gradients and BN statistics against the
plain network there too).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from mtcp.models.backbone import TimmBackbone
from mtcp.models.cfm import CoherenceFusion, attention_in_fp32, resolve_scale
from mtcp.models.fpn import FPN
from mtcp.models.heads import make_heads
from mtcp.models.mask2former import Mask2FormerEncoder
from mtcp.models.outputs import Predictions
from mtcp.models.padding import crop_outputs, pad_to_multiple
from mtcp.models.query_decoder import FUSIONS, QueryDecoder, fuse
from mtcp.models.srm import TraceBack
from mtcp.models.task_decoder import TaskDecoder


@dataclass(frozen=True)
class MTCPFeatures:
    """MT-CP's intermediate maps for a padded image (the module doc's names after each field).

    Per-task fields map task -> map. ``queries``/``mask_logits`` are None without the
    query decoder, ``trace`` is None without the trace-back.
    """

    pixels: Tensor  #: P [B, D, H/4, W/4]
    queries: Tensor | None  #: M [B, N, D]
    mask_logits: Tensor | None  #: [B, N, H/4, W/4]
    shared: Tensor  #: R [B, D, H/4, W/4]
    stages: dict[str, list[Tensor]]  #: S_t, the task decoder's stages (its ``feature_info``)
    decoded: dict[str, Tensor]  #: X_t [B, D, H/4, W/4]
    fused: dict[str, Tensor]  #: C_t [B, D, H/4, W/4]
    trace: dict[str, list[Tensor]] | None  #: the SRMs' maps at 1/16, 1/8, 1/4


#: the parts activation checkpointing can wrap (``MTCPNet(checkpointing=...)``)
CHECKPOINT_PARTS = ("backbone", "pixel_decoder", "query_decoder", "task_decoders", "cfm", "trace_back", "heads")


#: the fused attention kernels whose outputs a checkpointed part keeps (module doc): CPU flash, CUDA
#: flash, memory-efficient and cuDNN attention (`F.scaled_dot_product_attention` picks one of them)
ATTENTION_KERNELS = frozenset({
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
})


def keep_attention(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    """Selective-checkpoint policy: keep the fused attention kernels' outputs, recompute the rest."""
    return CheckpointPolicy.MUST_SAVE if op in ATTENTION_KERNELS else CheckpointPolicy.PREFER_RECOMPUTE


#: the selective-checkpoint contexts of `keep_attention`, in the form Dynamo can trace (a partial)
KEEP_ATTENTION_CONTEXTS = functools.partial(create_selective_checkpoint_contexts, keep_attention)


@contextlib.contextmanager
def entered(*managers: contextlib.AbstractContextManager) -> Iterator[None]:
    """Every one of ``managers`` at once, entered in order (the first outermost)."""
    with contextlib.ExitStack() as stack:
        for manager in managers:
            stack.enter_context(manager)
        yield


def resolve_checkpointing(checkpointing: bool | str | list[str] | tuple[str, ...]) -> frozenset[str]:
    """True -> every part of `CHECKPOINT_PARTS`, False/None -> none, a name or names -> those."""
    if checkpointing is None or checkpointing is False:
        return frozenset()
    if checkpointing is True:
        return frozenset(CHECKPOINT_PARTS)
    parts = [checkpointing] if isinstance(checkpointing, str) else list(checkpointing)
    unknown = [p for p in parts if p not in CHECKPOINT_PARTS]
    if unknown:
        raise ValueError(
            f"model.net.checkpointing: unknown part(s) {unknown}; a bool or names from {list(CHECKPOINT_PARTS)}"
        )
    return frozenset(parts)


@contextlib.contextmanager
def frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """The BatchNorms of ``module`` update throw-away copies of their buffers, the originals stay.

    For the recomputation of a checkpointed part: the forward already updated the running
    statistics once, and in training mode the output does not depend on them. The BNs keep
    tracking (the recomputation must save the same tensors as the forward); they just write
    into clones of ``running_mean``, ``running_var`` and ``num_batches_tracked``.
    """
    names = ("running_mean", "running_var", "num_batches_tracked")
    kept = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            kept.append((m, {n: getattr(m, n) for n in names if getattr(m, n, None) is not None}))
    for m, buffers in kept:
        for n, b in buffers.items():
            setattr(m, n, b.clone())
    try:
        yield
    finally:
        for m, buffers in kept:
            for n, b in buffers.items():
                setattr(m, n, b)


def _check_encoder(encoder: Mask2FormerEncoder, dim: int, use_query_decoder: bool, **own: Any) -> None:
    """An encoder replaces the backbone and both decoders: their settings must stay unset."""
    given = sorted(k for k, v in own.items() if v is not None)
    if given:
        raise ValueError(f"model.net.init_args: {given} belong to the encoder (its Mask2Former config) and must "
                         "stay unset when model.net.init_args.encoder is given")
    if dim != encoder.dim:
        raise ValueError(f"model.net.init_args.dim={dim} must equal the encoder's width (Mask2Former's "
                         f"mask_feature_size, {encoder.dim})")
    if use_query_decoder != encoder.use_queries:
        raise ValueError(f"model.net.init_args.use_query_decoder={use_query_decoder} but the encoder's use_queries="
                         f"{encoder.use_queries}; set both the same (without queries, R = P)")


#: the pixel-decoder levels the query decoder can visit (beyond P at 1/4): 1/8, 1/16, 1/32
MAX_QUERY_LEVELS = 3


class MTCPNet(nn.Module):
    """MT-CP: raw `Predictions` per task; auxiliary levels ``initial``, ``srm1``, ``srm2``.

    Args:
        task_channels: output width of every task (given by the data module).
        backbone: the timm backbone adapter (resnet18 when None).
        encoder: Hugging Face's Mask2Former in place of backbone, pixel decoder and query decoder
            (`mtcp.models.mask2former`, the authors' encoder); ``backbone``, ``num_queries``,
            ``query_layers``, ``query_heads`` and ``query_ffn_dim`` then belong to its config and
            must stay unset, and ``dim`` must equal its ``mask_feature_size``.
        dim: D, the width of P, R, X_t, C_t and the SRM predictions.
        num_queries: N, the query decoder's learnable queries (100 when None).
        query_layers: L, query decoder layers (3 when None); they visit the levels 1/32, 1/16,
            1/8 in turn (with L < 3 only the finest L of them).
        query_heads: attention heads of the query decoder (8 when None).
        query_ffn_dim: FFN width of the query decoder (8 D when None, Mask2Former's 2048 at D = 256).
        fusion: ``"query"`` (R = P + P * softmax_n(mask logits)^T M) or ``"reference"`` (the
            authors' P * sum_n mask logits); see `mtcp.models.query_decoder`.
        attention_scale: the CFM's softmax scale: None = 1/sqrt(D), ``"none"`` = 1.0 (the authors').
        attention_precision: the CFM attention under bf16 autocast: ``"auto"`` (bf16 with a scale
            of at most 1/sqrt(width), fp32 otherwise), ``"fp32"`` or ``"autocast"`` (`mtcp.models.cfm`).
        decoder_depths: Swin blocks in each task-decoder stage.
        decoder_heads: attention heads of the task-decoder stages.
        window: Swin window of the task decoders.
        decoder_stage_norm: a LayerNorm on each task-decoder stage output (the authors').
        decoder_fpn_output: the task decoder's FPN output conv, ``"conv_bn_relu"`` or the authors'
            plain ``"conv"``.
        cfm_fusion: ``"linear"`` (gated maps -> D channels) or the authors' ``"wide_relu"``
            ((T-1) D channels, ReLU); `mtcp.models.cfm`.
        head_kernel: the heads' first convolution, 3 or the authors' 1.
        initial_head: with the trace-back, also supervise C_t through the auxiliary ``initial``
            head; False supervises SRM1 and SRM2 only, as the authors do.
        use_query_decoder, use_cfm, use_trace_back: ablation switches (module doc).
        checkpointing: activation checkpointing in training (module doc): True = every part
            this network has, or a list of part names from `CHECKPOINT_PARTS`;
            same outputs and gradients in less memory, for one more forward of those parts.
        recompute_attention: with checkpointing, recompute the fused attention kernels too (a
            little less memory, the CFM attention's forward once more per step); False keeps their
            outputs (module doc).
    """

    def __init__(
        self,
        task_channels: dict[str, int],
        backbone: TimmBackbone | None = None,
        encoder: Mask2FormerEncoder | None = None,
        dim: int = 256,
        num_queries: int | None = None,
        query_layers: int | None = None,
        query_heads: int | None = None,
        query_ffn_dim: int | None = None,
        fusion: str = "query",
        attention_scale: float | str | None = None,
        attention_precision: str = "auto",
        decoder_depths: tuple[int, int, int] = (1, 2, 1),
        decoder_heads: int = 2,
        window: int = 7,
        decoder_stage_norm: bool = False,
        decoder_fpn_output: str = "conv_bn_relu",
        cfm_fusion: str = "linear",
        head_kernel: int = 3,
        initial_head: bool = True,
        use_query_decoder: bool = True,
        use_cfm: bool = True,
        use_trace_back: bool = True,
        checkpointing: bool | list[str] | tuple[str, ...] = False,
        recompute_attention: bool = False,
    ) -> None:
        super().__init__()
        if encoder is not None:
            _check_encoder(encoder, dim, use_query_decoder, backbone=backbone, num_queries=num_queries,
                           query_layers=query_layers, query_heads=query_heads, query_ffn_dim=query_ffn_dim)
        num_queries = 100 if num_queries is None else num_queries
        query_layers = 3 if query_layers is None else query_layers
        query_heads = 8 if query_heads is None else query_heads
        use_own_queries = use_query_decoder and encoder is None  # an encoder's query decoder is its own
        if fusion not in FUSIONS:
            raise ValueError(f"model.net.fusion: unknown fusion {fusion!r}; choose one of {list(FUSIONS)}")
        if use_own_queries and query_layers < 1:
            raise ValueError(f"model.net.query_layers must be >= 1 with the query decoder; got {query_layers}")
        if dim % 4 or (use_own_queries and dim % query_heads) or dim % decoder_heads:
            raise ValueError(
                f"model.net.dim={dim} must be a multiple of 4, of query_heads={query_heads} and of "
                f"decoder_heads={decoder_heads}"
            )
        if len(decoder_depths) != 3:
            raise ValueError(f"model.net.decoder_depths: three stages (1/4, 1/8, 1/16); got {decoder_depths}")
        resolve_scale(attention_scale, dim)  # fail at construction on a bad value
        attention_in_fp32(attention_precision, 1.0, dim)  # likewise
        checkpointed = resolve_checkpointing(checkpointing)
        self.task_channels = dict(task_channels)
        self.tasks = list(self.task_channels)
        self.fusion = fusion
        self.encoder = encoder
        if encoder is not None:
            self.backbone = self.pixel_decoder = self.query_decoder = None
        else:
            self.backbone = backbone or TimmBackbone()
            levels = min(query_layers, MAX_QUERY_LEVELS) if use_query_decoder else 0
            self.pixel_decoder = FPN(self.backbone.feature_info.channels, dim, num_outputs=1 + levels)
            self.query_decoder = (
                QueryDecoder(dim, num_queries, query_layers, levels, query_heads, query_ffn_dim or 8 * dim)
                if use_query_decoder
                else None
            )
        self.task_decoders = nn.ModuleDict(
            {t: TaskDecoder(dim, tuple(decoder_depths), decoder_heads, window, decoder_stage_norm, decoder_fpn_output)
             for t in self.tasks}
        )
        widths = self.task_decoders[self.tasks[0]].feature_info.channels  # S_t, what each SRM reads
        self.cfm = (
            nn.ModuleDict({t: CoherenceFusion(dim, len(self.tasks) - 1, attention_scale, cfm_fusion,
                                              attention_precision)
                           for t in self.tasks})
            if use_cfm and len(self.tasks) > 1
            else None
        )
        self.trace_back = nn.ModuleDict({t: TraceBack(dim, widths) for t in self.tasks}) if use_trace_back else None
        self.levels = (["final", *(["initial"] if initial_head else []), "srm1", "srm2"] if use_trace_back
                       else ["final"])
        self.heads = nn.ModuleDict({level: make_heads(self.task_channels, dim, head_kernel) for level in self.levels})
        absent = {part for part in CHECKPOINT_PARTS if getattr(self, part) is None}
        if checkpointing is not True and checkpointed & absent:
            raise ValueError(
                f"model.net.checkpointing: {sorted(checkpointed & absent)} not built in this network (an encoder "
                "replaces the backbone, pixel decoder and query decoder; use_query_decoder, use_cfm and "
                "use_trace_back false drop theirs); drop them from the list")
        self.checkpointing = checkpointed - absent
        self.recompute_attention = recompute_attention

    @property
    def pad_multiple(self) -> int:
        """Inputs are padded to the backbone's coarsest stride (the Swin stages pad themselves)."""
        if self.encoder is not None:
            return self.encoder.pad_multiple
        return max(self.backbone.feature_info.strides)

    def _run(self, part: str, module: nn.Module, *args: Any) -> Any:
        """``module(*args)``, under activation checkpointing when ``part`` is checkpointed and training."""
        if part not in self.checkpointing or not (self.training and torch.is_grad_enabled()):
            return module(*args)
        if torch.compiler.is_compiling():  # module doc, "Under torch.compile"
            if self.recompute_attention:
                return checkpoint(module, *args, use_reentrant=False)
            return checkpoint(module, *args, use_reentrant=False, context_fn=KEEP_ATTENTION_CONTEXTS)

        def contexts() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
            if self.recompute_attention:  # (forward, recomputation)
                return contextlib.nullcontext(), frozen_batchnorm_stats(module)
            forward, recomputation = KEEP_ATTENTION_CONTEXTS()
            return forward, entered(frozen_batchnorm_stats(module), recomputation)  # clones outside the policy

        return checkpoint(module, *args, use_reentrant=False, context_fn=contexts)

    def forward_features(self, image: Tensor) -> MTCPFeatures:
        """Every intermediate map for a padded image (`MTCPFeatures`)."""
        queries = masks = None
        if self.encoder is not None:
            encoded = self.encoder(image)
            pixels, queries, masks = encoded.pixels, encoded.queries, encoded.mask_logits
        else:
            feats = self._run("pixel_decoder", self.pixel_decoder, self._run("backbone", self.backbone, image))
            pixels = feats[0]
            if self.query_decoder is not None:  # the levels coarse to fine
                queries, masks = self._run("query_decoder", self.query_decoder, feats[1:][::-1], pixels)
        shared = pixels if queries is None else fuse(pixels, queries, masks, self.fusion)
        decoded = {t: self._run("task_decoders", self.task_decoders[t], shared) for t in self.tasks}
        own = {t: x for t, (x, _) in decoded.items()}
        stages = {t: s for t, (_, s) in decoded.items()}
        if self.cfm is not None:
            fused = {
                t: self._run("cfm", self.cfm[t], own[t], [own[a] for a in self.tasks if a != t]) for t in self.tasks
            }
        else:
            fused = dict(own)
        trace = None
        if self.trace_back is not None:
            trace = {t: self._run("trace_back", self.trace_back[t], fused[t], stages[t]) for t in self.tasks}
        return MTCPFeatures(pixels, queries, masks, shared, stages, own, fused, trace)

    def forward(self, image: Tensor) -> Predictions:
        """``image`` [B, 3, H, W] in [0, 1], any H, W -> raw predictions per task (and level) at H x W."""
        size = tuple(image.shape[-2:])
        padded = pad_to_multiple(image, self.pad_multiple)
        full = tuple(padded.shape[-2:])
        feats = self.forward_features(padded)
        if feats.trace is None:
            sources = {"final": feats.fused}
        else:
            srm1, srm2, final = zip(*(feats.trace[t] for t in self.tasks), strict=True)
            sources = {
                "final": dict(zip(self.tasks, final, strict=True)),
                "initial": feats.fused,  # (built only with initial_head)
                "srm1": dict(zip(self.tasks, srm1, strict=True)),
                "srm2": dict(zip(self.tasks, srm2, strict=True)),
            }
        outputs = {
            level: {t: self._run("heads", self.heads[level][t], sources[level][t], full) for t in self.tasks}
            for level in self.levels
        }
        final = outputs.pop("final")
        return crop_outputs(Predictions(final, outputs), size)
