"""Datasets for active learning, one module per source:

    tfds          TFDS images (MNIST, Fashion-MNIST, CIFAR-10, ...): load, prepare offline
    splits        the pool / validation / test split the loop consumes (``ALSplit``)
    toy           2-D moons and blobs
    image_folder  a person's own images, one sub-folder per class (``jaxal.label``)

``python -m jaxal.data prepare|info`` is the command line (``jaxal.cli.data``). The names
below are the ones runs and notebooks use; the image-folder reader is imported on its own.
"""

from __future__ import annotations

from jaxal.data.splits import ALSplit, make_al_split, normalise
from jaxal.data.tfds import (
    DATASETS,
    ChecksumError,
    DataDirPermissionError,
    DatasetCorruptError,
    DatasetNotPreparedError,
    DatasetSpec,
    ImageDataset,
    MissingDependencyError,
    UnknownDatasetError,
    channel_statistics,
    get_spec,
    load_dataset,
    prepare_dataset,
    prepared_fingerprint,
    resolve_cache_dir,
    resolve_data_dir,
    spec_from_info,
)
from jaxal.data.toy import toy_2d, toy_al_split

__all__ = [
    "DATASETS", "ALSplit", "ChecksumError", "DataDirPermissionError", "DatasetCorruptError",
    "DatasetNotPreparedError", "DatasetSpec", "ImageDataset", "MissingDependencyError",
    "UnknownDatasetError", "channel_statistics", "get_spec", "load_dataset", "make_al_split",
    "normalise", "prepare_dataset", "prepared_fingerprint", "resolve_cache_dir",
    "resolve_data_dir", "spec_from_info", "toy_2d", "toy_al_split",
]
