"""Training recipes and their data: examples from any source, decoding in DataLoader workers, packing,
length-bucketed batches that resume exactly and split across ranks."""

from auralm.data import ArrowAudio, DataError, Example, read_examples
from auralm.training.audio_dataset import AudioTextDataset, Batch, Sample, SkippedExamples, collate, pack_examples
from auralm.training.sampler import BucketBatchSampler

__all__ = [
    "ArrowAudio",
    "AudioTextDataset",
    "Batch",
    "BucketBatchSampler",
    "DataError",
    "Example",
    "Sample",
    "SkippedExamples",
    "collate",
    "pack_examples",
    "read_examples",
]
