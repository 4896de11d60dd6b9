"""How the trained teacher teaches: its logits per training batch, and the KD extension of the Trainer."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from core.engine.trainer import Extension, Trainer


class OfflineTargets:
    """Teacher logits of the training clips, looked up by clip index (computed once, cached on disk)."""

    online = False

    def __init__(self, logits: np.ndarray, device: torch.device) -> None:
        self.table = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)).to(device)

    def __call__(self, indices: list[int], wave: torch.Tensor | None = None) -> torch.Tensor:
        return self.table[torch.as_tensor(indices, device=self.table.device)]


class OnlineTargets:
    """The teacher run on the student's batch every step: on ``wave`` when the loop passes the
    (augmented) waveform the student sees, else on the clean clips of ``indices``."""

    online = True

    def __init__(self, module: nn.Module, train_waves: Any, device: torch.device) -> None:
        self.module, self.waves, self.device = module, train_waves, device

    @torch.no_grad()  # not inference_mode: its tensors may not enter the student's autograd graph
    def __call__(self, indices: list[int], wave: torch.Tensor | None = None) -> torch.Tensor:
        if wave is None:
            wave = self.waves.batch(indices)[0].to(self.device)
        return self.module(wave).float()


class Distillation(Extension):
    """KD in the Trainer: the teacher's targets for every step, what the run learned from (params,
    tags, the teacher's own scores at step 0) and the teacher's scores beside the student's final ones.

    Args:
        teacher: the prepared teacher (:class:`~core.stages.teacher.stage.PreparedTeacher`).
        mode: ``offline`` (cached logits of the clean clips) or ``online`` (the teacher runs on every
            batch, on the augmented waveform the student hears).
    """

    def __init__(self, teacher: Any, mode: str, train_waves: Any, device: torch.device) -> None:
        self.teacher, self.mode = teacher, mode
        self.targets = teacher.targets(mode, train_waves, device)

    def log_params(self, trainer: Trainer) -> None:
        if not trainer.dist.main:
            return
        t = self.teacher
        trainer.tracker.log_params(
            {
                "teacher_key": t.key,
                "teacher_path": str(t.path),
                "teacher_run_id": t.run_id or "",
                "teacher_checkpoint": t.source,  # resolved: the default's hub id or URL, not "None"
                "teacher_weights": t.weights,  # the checkpoint's content, as a digest
            }
        )
        trainer.tracker.log_metrics({k: v for k, v in t.scores.items() if k.startswith("teacher_")}, step=0)
        trainer.tracker.set_tags({"stage": "kd", "teacher": t.name, "kd_mode": self.mode})

    def final_metrics(self) -> dict[str, float]:
        return dict(self.teacher.scores)


__all__ = ["Distillation", "OfflineTargets", "OnlineTargets"]
