"""Datasets from the config, and the step -> batch source fed to a ``torch.utils.data.DataLoader``.

``BatchSource[step]`` asks the ``MultiDatasetSampler`` which dataset and records form the batch of ``step``,
maps every record with a ``random.Random`` seeded by (seed, rank, step, slot), and replaces a record that
cannot be used by a deterministic stand-in from the same dataset and aspect group (counted).  A batch is
therefore a pure function of the step: workers, restarts and resumption all see the same data.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import DataLoader, Dataset

from train.batching import BatchingConfig, DatasetMeta, TrainBatch, collate
from train.data.coco import load_coco_instances
from train.data.common import DatasetFormatError, LoadedDataset, SkipStats
from train.data.mapper import SampleMapper
from train.data.refcoco import load_refcoco
from train.data.routing import route_task
from train.data.sa1b import load_sa1b
from train.data.sampler import MultiDatasetSampler
from train.data.transforms import AugmentConfig
from train.data.ytvis import load_ytvis

Reader = Literal["coco", "lvis", "refcoco", "sa1b", "ytvis", "vg", "grit"]
READERS = ("coco", "lvis", "refcoco", "sa1b", "ytvis", "vg", "grit")
MAX_REPLACEMENTS = 16


@dataclass
class DatasetSpec:
    """One training dataset in a recipe (``data.datasets[*]`` in the YAML)."""

    name: str
    reader: Reader
    json: str
    image_root: str
    dataset_name: str | None = None  # routing tag (see train.data.routing); None for lvis / refcoco / sa1b / vg
    ratio: float = 1.0
    batch_size: int = 2
    masks: bool | None = None
    visual_prompt: bool | None = None
    description_field: str | None = None  # vg: object_name or caption; grit: caption_with_token
    clip_frames: int = 2
    frame_range: int = 5
    filter_empty: bool = True
    strict_categories: bool = False
    augment: dict[str, Any] | None = None  # per-dataset override of the recipe's augmentation

    @classmethod
    def from_dict(cls, raw: dict[str, Any], root: str | Path) -> DatasetSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"dataset {raw.get('name', '?')!r}: unknown field(s) {unknown}; known: {sorted(known)}")
        missing = [k for k in ("name", "reader", "json", "image_root") if k not in raw]
        if missing:
            raise ValueError(f"dataset entry {raw!r} lacks {missing}")
        spec = cls(**raw)
        if spec.reader not in READERS:
            raise ValueError(f"dataset {spec.name!r}: reader must be one of {READERS}, got {spec.reader!r}")
        spec.json = str(_resolve(spec.json, root))
        spec.image_root = str(_resolve(spec.image_root, root))
        return spec


def _resolve(path: str, root: str | Path) -> Path:
    p = Path(os.path.expandvars(os.path.expanduser(path)))
    return p if p.is_absolute() else Path(root) / p


def load_dataset(spec: DatasetSpec) -> LoadedDataset:
    common = {"name": spec.name}
    if spec.reader in ("coco", "lvis"):
        return load_coco_instances(
            spec.json, spec.image_root, spec.dataset_name, masks=spec.masks, filter_empty=spec.filter_empty,
            strict_categories=spec.strict_categories, **common,
        )
    if spec.reader in ("vg", "grit"):
        field_name = spec.description_field or ("caption_with_token" if spec.reader == "grit" else "object_name")
        ds = load_coco_instances(
            spec.json, spec.image_root, spec.dataset_name, masks=False, filter_empty=spec.filter_empty,
            description_field=field_name, task=spec.reader, **common,
        )
        for r in ds.records:
            for a in r["annotations"]:
                a["category_id"] = 0
        ds.class_names = ["object"]
        return ds
    if spec.reader == "refcoco":
        return load_refcoco(spec.json, spec.image_root, spec.dataset_name, masks=spec.masks, **common)
    if spec.reader == "sa1b":
        return load_sa1b(spec.json, spec.image_root, spec.dataset_name, **common)
    return load_ytvis(
        spec.json, spec.image_root, spec.dataset_name or spec.name, masks=spec.masks, filter_empty=spec.filter_empty,
        strict_categories=spec.strict_categories, **common,
    )


def dataset_meta(spec: DatasetSpec, ds: LoadedDataset) -> DatasetMeta:
    pool: list[str] = []
    if spec.reader in ("vg", "grit"):
        pool = sorted({a["description"] for r in ds.records for a in r["annotations"]})
    return DatasetMeta(
        name=spec.name, class_names=ds.class_names, has_masks=ds.has_masks, is_video=ds.is_video,
        visual_prompt=spec.visual_prompt, description_pool=pool,
    )


@dataclass
class BatchSource(Dataset):
    """Map-style dataset over steps: ``source[step]`` -> ``TrainBatch``."""

    datasets: list[LoadedDataset]
    specs: list[DatasetSpec]
    augment: AugmentConfig
    batching: BatchingConfig
    seed: int = 0
    rank: int = 0
    length: int = 10**12
    metas: list[DatasetMeta] = field(init=False)
    sampler: MultiDatasetSampler = field(init=False)
    mappers: list[SampleMapper] = field(init=False)
    tasks: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.metas = [dataset_meta(s, d) for s, d in zip(self.specs, self.datasets)]
        self.sampler = MultiDatasetSampler(
            [d.aspect_groups() for d in self.datasets], [s.ratio for s in self.specs],
            [s.batch_size for s in self.specs], self.seed, self.rank,
        )
        self.mappers = []
        for s in self.specs:
            aug = self.augment if s.augment is None else AugmentConfig.from_dict({**vars(self.augment), **s.augment})
            self.mappers.append(SampleMapper(aug, s.clip_frames, s.frame_range))
        self.tasks = []
        for s, d in zip(self.specs, self.datasets):
            try:
                self.tasks.append(route_task(d.records[0]))
            except ValueError as e:
                raise DatasetFormatError(f"dataset {s.name!r}: {e}") from e

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, step: int) -> TrainBatch:
        d, indices = self.sampler.batch(step)
        ds, spec, mapper, task = self.datasets[d], self.specs[d], self.mappers[d], self.tasks[d]
        stats = SkipStats()
        samples = []
        for slot, idx in enumerate(indices):
            record = ds.records[idx]
            group = 0 if record["width"] >= record["height"] else 1
            for attempt in range(MAX_REPLACEMENTS + 1):
                # str seeds hash with SHA-512: the same stream in every process (unlike hash())
                rng = random.Random(f"sample/{self.seed}/{self.rank}/{step}/{slot}/{attempt}")
                sample = mapper(record, task, ds.has_masks, rng, stats)
                if sample is not None:
                    samples.append(sample)
                    break
                stats.add("sample_replaced")
                record = ds.records[self.sampler.replacement(d, step, slot, attempt, group)]
            else:
                raise RuntimeError(
                    f"dataset {spec.name!r}: {MAX_REPLACEMENTS + 1} samples in a row could not be used "
                    f"({stats.summary()}); check image_root and the image files"
                )
        rng = random.Random(f"collate/{self.seed}/{self.rank}/{step}")
        return collate(step, d, samples, self.metas[d], self.batching, rng, stats.as_dict())


def make_loader(source: BatchSource, start_step: int, end_step: int, num_workers: int = 0) -> DataLoader:
    """Batches for steps [start_step, end_step) in order; workers prefetch ahead."""
    return DataLoader(
        source,
        batch_size=None,
        sampler=range(start_step, end_step),
        num_workers=num_workers,
        collate_fn=None,
        persistent_workers=False,
        prefetch_factor=2 if num_workers > 0 else None,
    )
