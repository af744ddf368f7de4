"""The authors' encoder: Hugging Face's Mask2Former (Swin backbone, deformable pixel decoder, query decoder).

MT-CP's paper fine-tunes a whole ADE20K-trained Mask2Former (``facebook/mask2former-swin-small-ade-semantic``)
and takes from it what `Mask2FormerEncoder` returns (docs/method.md section 2, docs/fidelity.md):

- P, the pixel decoder's last map at stride 4 (``pixel_decoder_last_hidden_state``, D = 256 channels);
- M, the queries after the query decoder's last layer and its LayerNorm [B, N, D] (what Mask2Former's
  class head reads);
- the mask logits of that last layer [B, N, H/4, W/4] (``masks_queries_logits``);
- the pixel decoder's multi-scale maps (strides 32, 16, 8) the queries attended to.

The class head (``class_predictor``) is not built: MT-CP has no class loss, so it would train nothing.
Swin's final LayerNorm (``swin.layernorm``), which the backbone builds but whose output Mask2Former
never reads, is replaced by an identity, so every parameter left is on the gradient path (DDP with
``find_unused_parameters=False``). ``transformers`` is an optional extra: ``pip install -e .[mask2former]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mtcp.models.backbone import building_from_checkpoint

#: the image normalisation of Mask2Former's image processor (ImageNet mean and std on [0, 1] images)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncodedScene:
    """What the encoder gives the MT-CP network (module doc)."""

    pixels: Tensor  #: P [B, D, H/4, W/4]
    queries: Tensor | None  #: M [B, N, D]; None when built without the query decoder
    mask_logits: Tensor | None  #: [B, N, H/4, W/4]; None without the query decoder
    levels: list[Tensor]  #: the pixel decoder's maps at strides 32, 16, 8 [B, D, h, w]


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as err:  # the optional extra is missing: say how to get it
        raise ImportError(
            "model.net.init_args.encoder: Mask2FormerEncoder needs Hugging Face transformers; install the "
            "optional extra with `pip install -e .[mask2former]`"
        ) from err
    return transformers


class Mask2FormerEncoder(nn.Module):
    """Hugging Face ``Mask2FormerModel`` as MT-CP's encoder (module doc).

    Args:
        weights: a hub id (``facebook/mask2former-swin-small-ade-semantic``, needs internet once; then
            Hugging Face's cache) or a local directory written by ``save_pretrained`` (offline). None:
            random weights from ``config``.
        config: ``Mask2FormerConfig`` keyword arguments; with ``weights`` they override the saved
            config's values. None and no weights: transformers' default config (a Swin-S Mask2Former).
        use_queries: False builds only the backbone and the pixel decoder (MT-CP's
            ``use_query_decoder: false`` ablation: R = P).
    """

    def __init__(self, weights: str | None = None, config: dict[str, Any] | None = None,
                 use_queries: bool = True) -> None:
        super().__init__()
        transformers = _transformers()
        overrides = dict(config or {})
        if weights is not None and building_from_checkpoint():
            # a checkpoint is about to load every weight: only the architecture is needed, never the hub
            hf_config = self._saved_config(transformers, weights, overrides)
            self.model = transformers.Mask2FormerModel(hf_config)
        elif weights is not None:
            local = Path(weights).expanduser()
            source = str(local) if local.exists() else weights
            if local.exists() and not (local / "config.json").is_file():
                raise FileNotFoundError(
                    f"model.net.init_args.encoder.init_args.weights: {str(local)!r} has no config.json; expected a "
                    "directory written by Mask2FormerForUniversalSegmentation.save_pretrained, or a hub id such as "
                    "'facebook/mask2former-swin-small-ade-semantic'")
            self.model = transformers.Mask2FormerModel.from_pretrained(source, **overrides)
        else:
            self.model = transformers.Mask2FormerModel(transformers.Mask2FormerConfig(**overrides))
        self.model.pixel_level_module.encoder.swin.layernorm = nn.Identity()  # its output is never read
        if not use_queries:
            del self.model.transformer_module
        self.use_queries = use_queries
        hf = self.model.config
        self.dim = int(hf.mask_feature_size)
        if use_queries and int(hf.hidden_dim) != self.dim:
            raise ValueError(
                f"model.net.init_args.encoder: Mask2Former's hidden_dim ({hf.hidden_dim}) must equal its "
                f"mask_feature_size ({hf.mask_feature_size}): MT-CP mixes the queries into P")
        self.num_queries = int(hf.num_queries)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)

    @staticmethod
    def _saved_config(transformers: Any, weights: str, overrides: dict[str, Any]) -> Any:
        try:  # a local directory, or the hub id's config already in Hugging Face's cache; never the network
            return transformers.Mask2FormerConfig.from_pretrained(weights, local_files_only=True, **overrides)
        except OSError as err:
            raise FileNotFoundError(
                f"rebuilding Mask2FormerEncoder(weights={weights!r}) from a checkpoint: its config.json is neither a "
                "local directory nor in Hugging Face's cache, and checkpoints never reach for the hub. Point "
                "model.net.init_args.encoder.init_args.weights at a save_pretrained directory, or load the hub id "
                "once with internet") from err

    @property
    def pad_multiple(self) -> int:
        """Inputs are padded to a multiple of the coarsest stride (32)."""
        return 32

    def forward(self, image: Tensor) -> EncodedScene:
        """``image`` [B, 3, H, W] in [0, 1], H and W multiples of 32."""
        pixels_in = (image - self.mean) / self.std
        if not self.use_queries:
            out = self.model.pixel_level_module(pixels_in, output_hidden_states=False)
            return EncodedScene(out.decoder_last_hidden_state, None, None, list(out.decoder_hidden_states))
        out = self.model(pixels_in, output_hidden_states=True, return_dict=True)
        queries = out.transformer_decoder_intermediate_states[-1].transpose(0, 1)  # [N, B, D] -> [B, N, D]
        return EncodedScene(out.pixel_decoder_last_hidden_state, queries, out.masks_queries_logits[-1],
                            list(out.pixel_decoder_hidden_states))
