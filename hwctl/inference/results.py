"""What an inference returns: logits per image, top-k classes, and when labels are known,
accuracy (with its 95 % Wilson interval) and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hwctl.nn.evaluation import wilson_interval_pct
from hwctl.vocabulary import CompensationMethod


@dataclass(frozen=True)
class Scores:
    """Accuracy of top-1 predictions against labels: percent, interval and confusion counts."""

    accuracy_pct: float
    ci95_pct: tuple[float, float]
    top_k_accuracy_pct: float  # a label among the k best counts as correct
    n_images: int
    n_correct: int
    confusion: npt.NDArray[np.int64]  # [true class, predicted class] counts

    def to_json(self) -> dict[str, object]:
        return {
            "accuracy_pct": self.accuracy_pct, "ci95_pct": list(self.ci95_pct),
            "top_k_accuracy_pct": self.top_k_accuracy_pct, "n_images": self.n_images,
            "n_correct": self.n_correct, "confusion": self.confusion.tolist(),
        }  # fmt: skip


def top_k(logits: npt.NDArray[np.floating], k: int) -> npt.NDArray[np.int64]:
    """The k most likely classes per row of logits (…, classes), most likely first."""
    k = min(k, logits.shape[-1])
    if logits.shape[-1] == 0 or logits.size == 0:
        return np.zeros((*logits.shape[:-1], k), np.int64)
    part = np.argpartition(-logits, k - 1, axis=-1)[..., :k]
    order = np.argsort(-np.take_along_axis(logits, part, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(part, order, axis=-1).astype(np.int64)


@dataclass(frozen=True)
class Outcome:
    """One compensation method, one repeat: the network's logits for every input."""

    method: CompensationMethod
    repeat: int
    logits: npt.NDArray[np.float32]  # (images, classes)

    def top_k(self, k: int) -> npt.NDArray[np.int64]:
        return top_k(self.logits, k)

    def scores(self, labels: npt.NDArray[np.integer], k: int = 1) -> Scores:
        """Top-1 accuracy and confusion (labels beyond the network's classes count as errors)."""
        top = self.top_k(k)
        predicted = top[:, 0]
        n_classes = max(self.logits.shape[1], int(labels.max()) + 1 if labels.size else 0)
        n_correct = int((predicted == labels).sum())
        confusion = np.bincount(labels * n_classes + predicted, minlength=n_classes * n_classes)
        n = int(labels.size)
        return Scores(
            accuracy_pct=100.0 * n_correct / max(n, 1), ci95_pct=wilson_interval_pct(n_correct, n),
            top_k_accuracy_pct=100.0 * float((top == labels[:, None]).any(axis=1).sum()) / max(n, 1),
            n_images=n, n_correct=n_correct,
            confusion=confusion.reshape(n_classes, n_classes).astype(np.int64),
        )  # fmt: skip
