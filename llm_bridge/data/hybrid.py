"""LISA's hybrid mix: draw a dataset type by its sampling rate, then a sub-dataset uniformly, then an item.

Defaults are LISA's: ``sem_seg||refer_seg||vqa||reason_seg`` at ``9,3,3,1``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from llm_bridge.data.base import RandomSampleDataset, SegSample

LISA_TYPES = ("sem_seg", "refer_seg", "vqa", "reason_seg")
LISA_RATES = (9, 3, 3, 1)


class HybridDataset(RandomSampleDataset):
    kind = "hybrid"

    def __init__(
        self,
        datasets: Mapping[str, Sequence[RandomSampleDataset]],
        rates: Mapping[str, float] | None = None,
        samples_per_epoch: int = 1000,
        seed: int = 0,
    ) -> None:
        """
        Args:
            datasets: type name -> its sub-datasets (e.g. ``{"sem_seg": [ade20k, cocostuff], ...}``).
            rates: type name -> sampling weight; default LISA's 9/3/3/1 for the types present.
        """
        super().__init__(samples_per_epoch, seed)
        self.datasets = {k: list(v) for k, v in datasets.items() if v}
        if not self.datasets:
            raise ValueError("no datasets given to the hybrid mix")
        default = dict(zip(LISA_TYPES, LISA_RATES))
        rates = dict(rates) if rates is not None else {k: default.get(k, 1.0) for k in self.datasets}
        missing = [k for k in self.datasets if k not in rates]
        if missing:
            raise ValueError(f"no sampling rate for dataset type(s) {missing}")
        unknown = [k for k, r in rates.items() if r > 0 and k not in self.datasets]
        if unknown:
            raise ValueError(f"sampling rate given for {unknown} but no such datasets were built")
        self.types = [k for k in self.datasets if rates[k] > 0]
        weights = np.array([float(rates[k]) for k in self.types])
        if not len(self.types) or weights.sum() <= 0:
            raise ValueError("every sampling rate is zero")
        self.probs = weights / weights.sum()

    def describe(self) -> str:
        return ", ".join(f"{k} p={p:.3f} x{len(self.datasets[k])}" for k, p in zip(self.types, self.probs))

    def sample(self, rng: np.random.Generator) -> SegSample:
        kind = self.types[int(rng.choice(len(self.types), p=self.probs))]
        subsets = self.datasets[kind]
        return subsets[int(rng.integers(len(subsets)))].sample(rng)


def parse_rates(types: str, rates: str) -> dict[str, float]:
    """LISA's flags: ``--dataset "sem_seg||refer_seg||vqa||reason_seg" --sample_rates "9,3,3,1"``."""
    names = types.split("||")
    values = [float(x) for x in rates.split(",")]
    if len(names) != len(values):
        raise ValueError(f"{len(names)} dataset types but {len(values)} sampling rates")
    return dict(zip(names, values))
