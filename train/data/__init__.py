"""Training data: readers (COCO-format, LVIS, RefCOCO-style, SA-1B-style, YouTube-VIS-style), task routing,
augmentations, the multi-dataset sampler, the step -> batch loader and the ShapesWorld generator."""
