"""Per-dataset task routing (official ``GLEE.get_task_name``) and the task-dependent training rules.

The task of a batch is decided by its first record:

1. ``dataset_name`` present: containing 'rvos' -> ``rvos``; containing 'obj365' -> ``obj365``; 'UVO_image' ->
   ``sa1b``; otherwise the name itself (``coco``, ``openimage``, ``bdd_det``, ``image_yt19``, ``ytvis19``, a custom
   dataset's name, ...);
2. else ``expressions`` -> ``grounding``;  3. else ``task`` (``sa1b``, ``vg``, ``grit``);
4. else ``not_exhaustive_category_ids`` -> ``lvis``.

The task then selects: the vocabulary rule (``vocab_mode``), box-only matching (``train.losses.NO_MASK_TASKS``),
the DN label table (``dn_table``), and whether 20% of batches become visual-prompt batches.
"""

from __future__ import annotations

from typing import Any, Literal

from glee.modeling.object_decoder import TASK_LABEL_ENCODER

# image tasks that switch to visual-prompt training with probability 0.2 (official prepare_targets)
VISUAL_PROMPT_TASKS = frozenset({"coco", "sa1b", "UVO_image", "image_yt19", "image_yt21", "image_o"})
# batches whose vocabulary is the union of positives padded with sampled negatives to MAX_CATEGORY_LEN
SAMPLED_VOCAB_TASKS = frozenset({"obj365", "lvis", "openimage", "obj365_clip", "lvis_clip", "openimage_clip"})
DESCRIPTION_VOCAB_TASKS = frozenset({"vg", "grit"})
GROUNDING_TASKS = frozenset({"grounding", "rvos"})

VocabMode = Literal["full", "sampled", "descriptions", "grounding"]


def route_task(record: dict[str, Any]) -> str:
    name = record.get("dataset_name")
    if name:
        if "rvos" in name:
            return "rvos"
        if "obj365" in name:
            return "obj365"
        if name == "UVO_image":
            return "sa1b"
        return str(name)
    if "expressions" in record:
        return "grounding"
    if "task" in record:
        return str(record["task"])
    if "not_exhaustive_category_ids" in record:
        return "lvis"
    raise ValueError(
        "cannot route a record to a task: it has no dataset_name, expressions, task or LVIS fields; set "
        "`dataset_name` for this dataset in the config"
    )


def vocab_mode(task: str, num_classes: int, max_category_len: int) -> VocabMode:
    if task in GROUNDING_TASKS:
        return "grounding"
    if task in DESCRIPTION_VOCAB_TASKS:
        return "descriptions"
    if task in SAMPLED_VOCAB_TASKS or num_classes > max_category_len:
        return "sampled"
    return "full"


def dn_table(task: str, vocab_size: int) -> tuple[str, int]:
    """(task key for ``predictor.label_encoder``, number of DN classes) for a task and its batch vocabulary.

    Official tasks use their own table and class count.  A custom dataset uses the smallest table that holds its
    vocabulary: 'grounding' (1), 'coco' (80), 'obj365' (100), 'vg' (200); its DN labels are drawn from the batch
    vocabulary.
    """
    if task in TASK_LABEL_ENCODER:
        return task, TASK_LABEL_ENCODER[task][1]
    for key in ("grounding", "coco", "obj365", "vg"):
        rows = TASK_LABEL_ENCODER[key][1]
        if vocab_size <= rows:
            return key, vocab_size
    raise ValueError(
        f"a batch vocabulary of {vocab_size} names is larger than every DN label table (max 200); lower "
        "max_category_len or let the dataset sample its vocabulary"
    )
