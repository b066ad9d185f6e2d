"""Multi-dataset batch sampling with per-dataset ratios and batch sizes (official ``MultiDatasetSampler`` with
``USE_DIFF_BS_SIZE``), as a pure function of the step.

Each step draws one dataset with probability ratio_i / sum(ratio) -- whatever the dataset sizes -- and takes
``batch_size_i`` samples from it, all from the same aspect-ratio group (landscape / portrait), so a batch never
mixes datasets.  Within a (dataset, group) pair the samples follow a fresh random permutation per pass, so an
epoch of that pair sees every sample once.  Everything is derived from (seed, rank, step): resuming at step s
reproduces the exact batches of an uninterrupted run, with any number of loader workers.

RFS is not implemented: the official configs enable it with REPEAT_THRESHOLD 0, where every repeat factor is 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BLOCK = 4096  # dataset choices are drawn in blocks; counts per block make lookups O(steps / BLOCK)


class MultiDatasetSampler:
    def __init__(
        self,
        groups: Sequence[Sequence[int]],
        ratios: Sequence[float],
        batch_sizes: Sequence[int],
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        """
        Args:
            groups: per dataset, the aspect group (0 landscape, 1 portrait) of every record
                (``LoadedDataset.aspect_groups()``).
            ratios: sampling ratio per dataset (> 0).
            batch_sizes: images (or clips) per batch for each dataset.
            seed, rank: the stream is a function of (seed, rank, step); ranks draw different batches.
        """
        if not (len(groups) == len(ratios) == len(batch_sizes)) or not ratios:
            raise ValueError("groups, ratios and batch sizes must be given for every dataset (and at least one)")
        if any(r <= 0 for r in ratios):
            raise ValueError(f"dataset ratios must be positive, got {list(ratios)}")
        if any(b <= 0 for b in batch_sizes):
            raise ValueError(f"batch sizes must be positive, got {list(batch_sizes)}")
        if any(len(g) == 0 for g in groups):
            raise ValueError("every dataset needs at least one sample")
        arrays = [np.asarray(g, dtype=np.int64) for g in groups]
        self.members = [[np.flatnonzero(a == 0), np.flatnonzero(a == 1)] for a in arrays]
        self.group_sizes = [[len(m[0]), len(m[1])] for m in self.members]
        self.ratios = np.asarray(ratios, dtype=np.float64)
        self.probs = self.ratios / self.ratios.sum()
        self.batch_sizes = list(batch_sizes)
        self.seed = int(seed)
        self.rank = int(rank)
        self._block_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        # cumulative draws per (dataset, group) at the start of each block
        self._cum: list[np.ndarray] = [np.zeros((len(self.group_sizes), 2), dtype=np.int64)]
        self._perm_cache: dict[tuple[int, int, int], np.ndarray] = {}

    # ------------------------------------------------------------------ internals
    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(dataset choice, aspect group) for the BLOCK steps of block b."""
        if b not in self._block_cache:
            rng = np.random.default_rng([self.seed, self.rank, 0, b])
            datasets = rng.choice(len(self.probs), size=BLOCK, p=self.probs)
            u = rng.random(BLOCK)
            sizes = np.asarray(self.group_sizes, dtype=np.float64)
            p_portrait = sizes[:, 1] / sizes.sum(1)  # a group is drawn in proportion to its size
            groups = (u < p_portrait[datasets]).astype(np.int64)
            if len(self._block_cache) > 8:
                self._block_cache.pop(next(iter(self._block_cache)))
            self._block_cache[b] = (datasets, groups)
        return self._block_cache[b]

    def _cumulative(self, b: int) -> np.ndarray:
        """Draw counts per (dataset, group) before block b."""
        while len(self._cum) <= b:
            k = len(self._cum) - 1
            datasets, groups = self._block(k)
            counts = np.zeros_like(self._cum[0])
            np.add.at(counts, (datasets, groups), 1)
            self._cum.append(self._cum[-1] + counts)
        return self._cum[b]

    def _permutation(self, d: int, g: int, epoch: int) -> np.ndarray:
        key = (d, g, epoch)
        if key not in self._perm_cache:
            if len(self._perm_cache) > 64:
                self._perm_cache.pop(next(iter(self._perm_cache)))
            rng = np.random.default_rng([self.seed, self.rank, 1, d, g, epoch])
            self._perm_cache[key] = rng.permutation(self.group_sizes[d][g])
        return self._perm_cache[key]

    # ------------------------------------------------------------------ API
    def batch(self, step: int) -> tuple[int, list[int]]:
        """(dataset index, record indices) of the batch at ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        b, pos = divmod(step, BLOCK)
        datasets, groups = self._block(b)
        d, g = int(datasets[pos]), int(groups[pos])
        if self.group_sizes[d][g] == 0:  # cannot happen (group drawn by size), kept for safety
            g = 1 - g
        prior = int(self._cumulative(b)[d, g] + np.sum((datasets[:pos] == d) & (groups[:pos] == g)))
        bs = self.batch_sizes[d]
        n = self.group_sizes[d][g]
        out = []
        for k in range(prior * bs, prior * bs + bs):
            epoch, idx = divmod(k, n)
            within = int(self._permutation(d, g, epoch)[idx])
            out.append(int(self.members[d][g][within]))
        return d, out

    def replacement(self, dataset: int, step: int, slot: int, attempt: int, group: int) -> int:
        """A deterministic stand-in record (same dataset and aspect group) for a sample that could not be used."""
        rng = np.random.default_rng([self.seed, self.rank, 2, step, slot, attempt])
        n = self.group_sizes[dataset][group]
        if n == 0:
            group = 1 - group
            n = self.group_sizes[dataset][group]
        within = int(rng.integers(n))
        return int(self.members[dataset][group][within])
