"""End-to-end inference: preprocessing, text-embedding cache, prompts, postprocessing and ``ImagePredictor``."""

from glee.inference.postprocess import PostprocessConfig
from glee.inference.predictor import ImagePredictor, PredictorConfig, check_class_names
from glee.inference.preprocess import PreparedBatch, PreprocessConfig
from glee.inference.prompts import VisualPrompt
from glee.inference.text_cache import TextEmbeddingCache

__all__ = [
    "ImagePredictor",
    "PostprocessConfig",
    "PredictorConfig",
    "PreparedBatch",
    "PreprocessConfig",
    "TextEmbeddingCache",
    "VisualPrompt",
    "check_class_names",
]
