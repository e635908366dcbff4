"""Data layer: chunk datasets, view samplers, train/validation streams, the test loader."""

from .chunk_io import cameras_to_vector, encode_image, read_chunk, vector_to_cameras, write_chunks
from .chunks import check_dataset_roots
from .step_tracker import StepTracker
from .stream import TestLoader, TrainStream
from .validation import ValidationSource

__all__ = [
    "StepTracker", "TrainStream", "ValidationSource", "TestLoader",
    "check_dataset_roots", "write_chunks", "read_chunk", "encode_image", "cameras_to_vector", "vector_to_cameras",
]
