"""LISA's training data formats for the bridge: ReasonSeg, referring segmentation, semantic/part segmentation
through question templates, LLaVA-Instruct VQA, the hybrid sampler and the batch collator."""

from llm_bridge.data.base import RandomSampleDataset, SegSample
from llm_bridge.data.collate import BridgeCollator
from llm_bridge.data.hybrid import LISA_RATES, LISA_TYPES, HybridDataset, parse_rates
from llm_bridge.data.reason_seg import ReasonSegDataset
from llm_bridge.data.refer_seg import ReferSegDataset
from llm_bridge.data.sem_seg import LabelMapDataset, PartDataset, build_sem_seg
from llm_bridge.data.vqa import VQADataset

__all__ = [
    "LISA_RATES",
    "LISA_TYPES",
    "BridgeCollator",
    "HybridDataset",
    "LabelMapDataset",
    "PartDataset",
    "RandomSampleDataset",
    "ReasonSegDataset",
    "ReferSegDataset",
    "SegSample",
    "VQADataset",
    "build_sem_seg",
    "parse_rates",
]
