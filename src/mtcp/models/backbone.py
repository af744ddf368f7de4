"""Any timm model as a four-level NCHW feature pyramid at strides 4, 8, 16 and 32.

Hierarchical models (ResNet, ConvNeXt, Swin, ...) give the pyramid through timm's
``features_only``; plain ViTs, whose features all have stride 16, get a simple pyramid
(ViTDet style): deconvolutions to strides 4 and 8, identity at 16, a strided
convolution to 32. Weights come from a local file (``checkpoint_path``, offline) or,
for users with internet, from timm's hub (``pretrained: true``). Inside
`weights_from_checkpoint` neither is read: a checkpoint is about to overwrite every
weight, so rebuilding a trained model never needs the hub or the original file.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import split_model_name_tag
from torch import Tensor, nn

from mtcp.models.outputs import FeatureInfo
from mtcp.models.swin import pad_before_shift as convert_swin_blocks

PYRAMID_STRIDES = (4, 8, 16, 32)

_WEIGHTS_FROM_CHECKPOINT: ContextVar[bool] = ContextVar("mtcp_weights_from_checkpoint", default=False)


@contextmanager
def weights_from_checkpoint() -> Iterator[None]:
    """Build backbones without their initial weights (no hub download, no ``checkpoint_path`` read).

    For rebuilding a model whose every weight a checkpoint then loads: ``mtcp test/predict
    --ckpt_path``, resuming, ``MultiTaskModule.load_from_checkpoint``. Works offline, and on a
    machine that lacks the file the training run started from.
    """
    token = _WEIGHTS_FROM_CHECKPOINT.set(True)
    try:
        yield
    finally:
        _WEIGHTS_FROM_CHECKPOINT.reset(token)


def building_from_checkpoint() -> bool:
    """True inside `weights_from_checkpoint`: encoders skip their initial weights (and the hub)."""
    return _WEIGHTS_FROM_CHECKPOINT.get()


_NAME_SETTING = "model.net.init_args.backbone.init_args.name"


def timm_name(name: str, from_hub: bool) -> str:
    """The name to hand timm for a backbone name as users write it: a timm model, with or without a
    pretrained tag (``swin_small_patch4_window7_224.ms_in1k``), or a Hugging Face hub repo
    (``hf-hub:timm/swin_small_patch4_window7_224.ms_in1k``).

    Only ``from_hub`` (``pretrained: true`` without a local file) keeps an ``hf-hub:`` name, for timm
    to fetch its config and weights. Otherwise nothing may reach the hub (random weights, a local
    ``checkpoint_path``, a model rebuilt from a checkpoint): timm's own repos are named
    ``timm/<architecture>.<tag>``, so that name is the timm model to build.
    """
    if name.startswith("hf-hub:"):
        if from_hub:
            return name
        org, _, model = name[len("hf-hub:"):].partition("/")
        if org != "timm":
            raise ValueError(
                f"{_NAME_SETTING}={name!r}: without pretrained: true only timm's own hub repos "
                "(hf-hub:timm/<model>.<tag>) can be built offline (random weights, checkpoint_path, or a model "
                "rebuilt from a checkpoint); use pretrained: true (internet) or a timm model name"
            )
        return known_timm_name(model, written=name)
    return known_timm_name(name)


def known_timm_name(name: str, written: str | None = None) -> str:
    """``name`` (``<model>`` or ``<model>.<tag>``) if the installed timm builds it; else a ValueError that
    names the setting and the close matches (models), or the tags timm has for that model."""
    written = name if written is None else written
    arch, tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5)
        hint = f"close matches: {close}" if close else "see timm.list_models()"
        raise ValueError(
            f"{_NAME_SETTING}={written!r} is not a timm model (timm {timm.__version__}; {hint}); e.g. 'resnet18', "
            "'convnext_tiny', 'swin_small_patch4_window7_224.ms_in1k', 'vit_small_patch16_224' (a pretrained "
            "tag after the dot is optional)"
        )
    if tag:
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        if tag not in tags:
            raise ValueError(
                f"{_NAME_SETTING}={written!r}: timm {timm.__version__} has no pretrained tag {tag!r} for {arch!r}; "
                f"its tags: {tags or 'none'} (or write {arch!r} without a tag)"
            )
    return name


class SimplePyramid(nn.Module):
    """Build strides 4..32 from one stride-16 map (for plain ViTs)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half, quarter = max(channels // 2, 1), max(channels // 4, 1)
        self.to_4 = nn.Sequential(
            nn.ConvTranspose2d(channels, half, 2, stride=2), nn.GroupNorm(1, half), nn.GELU(),
            nn.ConvTranspose2d(half, quarter, 2, stride=2),
        )
        self.to_8 = nn.ConvTranspose2d(channels, half, 2, stride=2)
        self.to_32 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.channels = [quarter, half, channels, channels]

    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.to_4(x), self.to_8(x), x, self.to_32(x)]


class TimmBackbone(nn.Module):
    """A timm model as a pyramid of four NCHW maps at strides 4, 8, 16, 32.

    ``feature_info`` declares the maps' channels and strides; decoders are built from it.

    Args:
        name: timm model name (``timm.list_models()``), optionally with a pretrained tag
            (``swin_small_patch4_window7_224.ms_in1k``), or ``hf-hub:timm/<model>.<tag>`` (`timm_name`).
        pretrained: download timm's weights (needs internet; ignored when
            ``checkpoint_path`` is given).
        checkpoint_path: local ``.pth``/``.safetensors`` weights for the model.
        img_size: the training input (H, W), for models with fixed-size position
            embeddings or windows (Swin, ViT); None for convnets.
        model_kwargs: further keyword arguments for ``timm.create_model``.
        pad_before_shift: Swin models only: pad each block's map to a window multiple before the
            cyclic shift, as the original Swin and its pretrained weights do (`mtcp.models.swin`);
            False keeps timm's shift-then-pad. No effect on other models.
    """

    def __init__(
        self,
        name: str = "resnet18",
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        img_size: tuple[int, int] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        pad_before_shift: bool = True,
    ) -> None:
        super().__init__()
        kwargs: dict[str, Any] = dict(model_kwargs or {})
        if img_size is not None:
            kwargs["img_size"] = tuple(img_size)
        if building_from_checkpoint():
            pretrained, checkpoint_path = False, None
        if checkpoint_path is not None:
            path = Path(checkpoint_path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"model backbone checkpoint_path {str(path)!r} does not exist; expected a local "
                    ".pth or .safetensors file with weights for timm model {name!r}"
                )
            pretrained = True
            kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
        self.name = name
        try:
            self.body = timm.create_model(timm_name(name, from_hub=pretrained and checkpoint_path is None),
                                          pretrained=pretrained, features_only=True, **kwargs)
        except TypeError as err:  # e.g. img_size for a convnet: name the setting, not timm's internals
            raise ValueError(
                f"backbone {name!r} does not accept {sorted(kwargs)} (model.net.init_args.backbone.init_args): "
                f"{err}; img_size is for Swin/ViT models only"
            ) from err
        if pad_before_shift:
            convert_swin_blocks(self.body)
        info = self.body.feature_info
        reductions, channels = list(info.reduction()), list(info.channels())
        self.channels_last = getattr(self.body, "output_fmt", "NCHW") == "NHWC"
        if all(r == reductions[-1] for r in reductions):  # plain ViT: one resolution
            if reductions[-1] != 16:
                raise ValueError(f"backbone {name!r}: plain models must have stride 16, got {reductions[-1]}")
            self.take = [len(reductions) - 1]
            self.pyramid: nn.Module | None = SimplePyramid(channels[-1])
            channels = self.pyramid.channels  # type: ignore[union-attr]
        else:
            missing = [s for s in PYRAMID_STRIDES if s not in reductions]
            if missing:
                raise ValueError(
                    f"backbone {name!r} gives feature strides {reductions}; strides {missing} are missing "
                    f"(need {list(PYRAMID_STRIDES)})"
                )
            self.take = [reductions.index(s) for s in PYRAMID_STRIDES]
            self.pyramid = None
            channels = [channels[i] for i in self.take]
        self.feature_info = FeatureInfo(tuple(channels), PYRAMID_STRIDES)
        cfg = self.body.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1), False)

    def forward(self, image: Tensor) -> list[Tensor]:
        """``image``: RGB in [0, 1], [B, 3, H, W] with H, W multiples of 32."""
        feats = self.body((image - self.mean) / self.std)
        if self.channels_last:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        feats = [feats[i].contiguous() for i in self.take]
        if self.pyramid is not None:
            return self.pyramid(feats[0])
        return feats
