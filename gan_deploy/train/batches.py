"""The real batches: which images each rank sees at each discriminator update."""
from __future__ import annotations

import numpy as np
import torch


class Batches:
    """Real batches as a pure function of the update counter u: no state to checkpoint.

    Epoch e uses one permutation of the whole data set drawn from (seed, e); rank r takes every world-th index
    of it, in batches of batch_size; the last incomplete batch of each rank is dropped."""

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int, rank: int, world: int):
        self.data, self.bs, self.seed, self.rank, self.world = data, batch_size, seed, rank, world
        self.per_epoch = (len(data) // world) // batch_size  # batches per rank per epoch (>= 1, checked)
        self._epoch, self._order = -1, None
        # indexing returns a plain NCHW tensor: give batches the data's (channels_last) layout back
        self.fmt = torch.channels_last if data.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format

    def get(self, u: int) -> torch.Tensor:  # -> [B, C, H, W]
        epoch, b = divmod(u, self.per_epoch)
        if epoch != self._epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.data))
            self._order = torch.from_numpy(perm[self.rank::self.world].copy()).to(self.data.device)  # type: ignore[assignment]
            self._epoch = epoch
        return self.data[self._order[b * self.bs:(b + 1) * self.bs]].contiguous(memory_format=self.fmt)  # type: ignore[index]
