"""The query decoder and the fusion of its queries into the shared pixel map R.

N learnable queries go through L layers of (self-attention, cross-attention to one
pixel-decoder level, FFN); the cross-attended level cycles coarse to fine, every level
carrying a learned level embedding and a fixed sine position embedding on its keys
(Mask2Former's round robin, without masked attention: MT-CP has no mask loss that
would make the masks meaningful to restrict attention with). The output is the query
embeddings M [B, N, D] and per-query mask logits [B, N, H/4, W/4], the dot products of
mask embeddings (an MLP of M) with the finest pixel map P.

`fuse` turns (P, M, mask logits) into R, the map shared by every task decoder, in one
of two forms (docs/method.md section 2, "Query decoder / R"):

``"reference"``
    the authors' ``einsum("bnhw,bdhw->bdhw", mask_logits, P)``: P scaled per pixel by
    the *sum* of the mask logits. The queries' channels never reach R, only a scalar
    per pixel, whose size grows with N and D.
``"query"`` (default)
    ``R = P + P * (softmax_n(mask_logits)^T M)``: every pixel is gated by a convex mix
    of the query embeddings, so R carries what the queries learned per channel; the
    residual keeps P's signal when the gate is near zero (as at initialisation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FUSIONS = ("query", "reference")


def sine_position_embedding(height: int, width: int, dim: int, like: Tensor) -> Tensor:
    """Fixed 2-D sine/cosine embedding [H*W, dim] (half the channels for y, half for x).

    Coordinates are normalised to [0, 2*pi], so the embedding is defined for any size.
    """
    if dim % 4:
        raise ValueError(f"query decoder: the width must be a multiple of 4 for the position embedding; got {dim}")
    quarter = dim // 4
    freq = 10000.0 ** (-torch.arange(quarter, device=like.device, dtype=torch.float32) / quarter)
    ys = (torch.arange(height, device=like.device, dtype=torch.float32) + 0.5) / height * 2 * math.pi
    xs = (torch.arange(width, device=like.device, dtype=torch.float32) + 0.5) / width * 2 * math.pi
    ey = ys[:, None] * freq[None]  # [H, quarter]
    ex = xs[:, None] * freq[None]  # [W, quarter]
    ey = torch.cat([ey.sin(), ey.cos()], dim=1)[:, None, :].expand(height, width, 2 * quarter)
    ex = torch.cat([ex.sin(), ex.cos()], dim=1)[None, :, :].expand(height, width, 2 * quarter)
    return torch.cat([ey, ex], dim=2).reshape(height * width, dim).to(like.dtype)


class QueryDecoderLayer(nn.Module):
    """Self-attention among the queries, cross-attention to pixels, FFN (post-norm, DETR style)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def forward(self, queries: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor) -> Tensor:
        q = queries + query_pos
        queries = self.norms[0](queries + self.self_attn(q, q, queries, need_weights=False)[0])
        attended = self.cross_attn(queries + query_pos, memory + memory_pos, memory, need_weights=False)[0]
        queries = self.norms[1](queries + attended)
        return self.norms[2](queries + self.ffn(queries))


class QueryDecoder(nn.Module):
    """N learnable queries refined against the pixel-decoder levels.

    Args:
        dim: width D of the queries and of the pixel-decoder maps.
        num_queries: N.
        num_layers: L; layer i cross-attends to level ``i % num_levels`` (coarse to fine).
        num_levels: how many pixel-decoder levels the layers visit; every level must be
            visited (``num_levels <= num_layers``) so that every level embedding trains.
        heads: attention heads.
        ffn_dim: hidden width of the FFN (Mask2Former: 2048 for D = 256).
    """

    def __init__(
        self,
        dim: int,
        num_queries: int = 100,
        num_layers: int = 3,
        num_levels: int = 3,
        heads: int = 8,
        ffn_dim: int = 2048,
    ) -> None:
        super().__init__()
        if not 1 <= num_levels <= num_layers:
            raise ValueError(f"query decoder: need 1 <= num_levels <= num_layers; got {num_levels}, {num_layers}")
        self.num_levels = num_levels
        self.query_feat = nn.Embedding(num_queries, dim)
        self.query_pos = nn.Embedding(num_queries, dim)
        self.level_embed = nn.Embedding(num_levels, dim)
        self.layers = nn.ModuleList(QueryDecoderLayer(dim, heads, ffn_dim) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.mask_embed = nn.Sequential(
            nn.Linear(dim, dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim),
        )

    def forward(self, levels: list[Tensor], pixels: Tensor) -> tuple[Tensor, Tensor]:
        """``levels``: ``num_levels`` maps [B, D, h, w], coarse to fine; ``pixels``: P [B, D, H, W].

        Returns M [B, N, D] and the mask logits [B, N, H, W].
        """
        if len(levels) != self.num_levels:
            raise ValueError(f"query decoder expects {self.num_levels} levels, got {len(levels)}")
        b = pixels.shape[0]
        memories, positions = [], []
        for i, level in enumerate(levels):
            h, w = level.shape[-2:]
            memories.append(level.flatten(2).transpose(1, 2) + self.level_embed.weight[i])
            positions.append(sine_position_embedding(h, w, level.shape[1], level).unsqueeze(0))
        queries = self.query_feat.weight.unsqueeze(0).expand(b, -1, -1)
        query_pos = self.query_pos.weight.unsqueeze(0).expand(b, -1, -1)
        for i, layer in enumerate(self.layers):
            j = i % self.num_levels
            queries = layer(queries, query_pos, memories[j], positions[j])
        queries = self.norm(queries)
        mask_logits = torch.einsum("bnd,bdhw->bnhw", self.mask_embed(queries), pixels)
        return queries, mask_logits


def fuse(pixels: Tensor, queries: Tensor, mask_logits: Tensor, mode: str = "query") -> Tensor:
    """R [B, D, H, W] from P [B, D, H, W], M [B, N, D] and mask logits [B, N, H, W] (see module doc)."""
    if mode == "reference":  # == einsum("bnhw,bdhw->bdhw", mask_logits, P)
        return pixels * mask_logits.sum(dim=1, keepdim=True)
    if mode == "query":
        mix = torch.einsum("bnhw,bnd->bdhw", F.softmax(mask_logits, dim=1), queries)
        return pixels + pixels * mix
    raise ValueError(f"unknown fusion {mode!r}; choose one of {list(FUSIONS)}")
