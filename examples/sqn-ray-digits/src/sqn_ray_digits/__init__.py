"""sqn-ray problem plugin: a small convolutional net on scikit-learn's 8x8 handwritten digits.

The digits (1,797 images, 10 classes) ship with scikit-learn, so nothing is downloaded. The first 1,500 images
(after a fixed shuffle) train, the other 297 test. Two problems are registered (see pyproject.toml):

* ``digits-cnn``: full batch;
* ``digits-cnn-b256``: mini-batches of 256 (a new batch at every accepted iterate).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sqn_ray.problems import ModuleProblem

N_TRAIN = 1500


class DigitsCNN(nn.Module):
    """conv3x3(1->4)-tanh-conv3x3/2(4->8)-tanh-linear(72->10): d = 1,066."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)            # 8x8 -> 6x6
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2)  # 6x6, padded to 7x7 -> 3x3
        self.head = nn.Linear(8 * 3 * 3, 10)

    def forward(self, x):
        x = torch.tanh(self.conv1(x))
        x = torch.tanh(self.conv2(F.pad(x, (0, 1, 0, 1))))
        return self.head(x.flatten(1))


def digits_data():
    """(X_train, y_train, X_test, y_test): images as (n, 1, 8, 8) float32 in [0, 1], labels int64."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    X = torch.tensor(digits.images[order] / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target[order], dtype=torch.int64)
    return X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:]


def _problem(name: str, batch_size: int | None) -> ModuleProblem:
    X, y, Xt, yt = digits_data()
    batching = "full batch" if batch_size is None else f"batches of {batch_size}"
    return ModuleProblem(name, DigitsCNN, F.cross_entropy, X, y, test=(Xt, yt), batch_size=batch_size,
                         target_accuracy=1.0 if batch_size is None else None,
                         description=f"sklearn digits ({N_TRAIN} train / {len(yt)} test, 8x8), small CNN, "
                                     f"softmax cross-entropy, {batching}")


def digits_cnn() -> ModuleProblem:
    """The entry point of ``digits-cnn``."""
    return _problem("digits-cnn", None)


def digits_cnn_b256() -> ModuleProblem:
    """The entry point of ``digits-cnn-b256``."""
    return _problem("digits-cnn-b256", 256)
