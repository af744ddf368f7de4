"""RLW, random loss weighting (Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus
Test for Multi-Task Learning", TMLR 2022; arXiv 2111.10603, 2021)."""

from __future__ import annotations

import hashlib
from typing import Any

import lightning as L
import torch
from torch import Tensor

from mtcp.balancers.base import Balancer


def step_seed(seed: int, step: int) -> int:
    """The generator seed of training step ``step``: the first 8 bytes (little-endian, 63 bits)
    of ``sha256(f"{seed}:{step}")``; the same in every process, unlike Python's ``hash``."""
    digest = hashlib.sha256(f"{seed}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class RLW(Balancer):
    """Random loss weighting (Lin et al., 2021/2022): fresh random weights at every step.

    ``w = T * softmax(eps)``, ``eps ~ N(0, I_T)``, drawn before every training forward
    (identity projection, ``total = sum_t w_t L_t``). The noise comes from a private
    ``torch.Generator`` seeded by ``(seed, trainer.global_step)`` (see `step_seed`), never
    from the global RNG: every rank draws the same weights, the rest of training sees the
    same random stream with or without RLW, and a resumed run draws exactly the weights the
    uninterrupted run would have (the seed is in the checkpoint). With gradient accumulation
    the micro-batches of one optimizer step share their weights.

    Args:
        seed: base seed of the weight draws.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)

    def weights_for_step(self, step: int) -> Tensor:
        generator = torch.Generator().manual_seed(step_seed(self.seed, step))
        noise = torch.randn(self.num_tasks, generator=generator, dtype=torch.float64)
        return self.num_tasks * torch.softmax(noise, dim=0)

    def prepare_step(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.weights = self.weights_for_step(int(trainer.global_step)).float()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.seed = int(state_dict["seed"])
