"""Classification metrics for one evaluation: accuracy, macro-F1, per-class F1, confusion matrix."""

from __future__ import annotations

from pathlib import Path

import attrs
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)


@attrs.frozen
class Scores:
    loss: float
    acc: float
    f1: float  # macro-F1
    per_class_f1: list[float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class

    def as_metrics(self, prefix: str, class_names: list[str] | None = None) -> dict[str, float]:
        """``{prefix_loss, prefix_acc, prefix_f1}`` plus per-class F1 when names are given."""
        out = {f"{prefix}_loss": self.loss, f"{prefix}_acc": self.acc, f"{prefix}_f1": self.f1}
        for name, value in zip(class_names or [], self.per_class_f1):
            out[f"{prefix}_f1_{name}"] = value
        return out


def score(logits: torch.Tensor, target: torch.Tensor, loss: float) -> Scores:
    """Multiclass scores from stacked logits; the decision is argmax (no threshold)."""
    return score_predictions(logits.argmax(dim=1), target, logits.shape[1], loss)


def score_predictions(pred: torch.Tensor, target: torch.Tensor, num_classes: int, loss: float) -> Scores:
    """Multiclass scores from predicted class indices."""
    k = num_classes
    return Scores(
        loss=float(loss),
        acc=float(multiclass_accuracy(pred, target, num_classes=k, average="micro", validate_args=False)),
        f1=float(multiclass_f1_score(pred, target, num_classes=k, average="macro", validate_args=False)),
        per_class_f1=[
            float(v) for v in multiclass_f1_score(pred, target, num_classes=k, average="none", validate_args=False)
        ],
        confusion=multiclass_confusion_matrix(pred, target, num_classes=k, validate_args=False).tolist(),
    )


def plot_confusion(scores: Scores, class_names: list[str], title: str, path: Path) -> Path:
    """Save the confusion matrix (row-normalised colours, raw counts written in) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # headless servers and CI have no display
    import matplotlib.pyplot as plt

    cm = torch.tensor(scores.confusion, dtype=torch.float64)
    norm = cm / cm.sum(dim=1, keepdim=True).clamp(min=1)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 0.8 + 0.6 * k), dpi=100)
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\nacc {scores.acc:.3f}  macro-F1 {scores.f1:.3f}", fontsize=9)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(int(cm[i, j])),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
