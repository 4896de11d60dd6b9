"""The teacher's passes over a split (logits, embeddings), each computed once and cached on disk.

A cache file's name hashes what its rows depend on: the module's weights and structure (front-end
settings included) and the clip set, so a changed teacher or clip set gets a new file and an
unchanged one is never run again. A member with a frozen backbone runs it exactly once per clip,
to embed it: its logits are its head applied to the cached embeddings (:func:`member_logits`).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.engine.metrics import Scores, score
from core.registry.contracts import Teacher
from core.stages.teacher.ensemble import TeacherEnsemble
from core.stages.teacher.plan import is_head, structure_hash, weights_digest
from core.util.files import atomic_path
from core.util.progress import StageProgress

log = logging.getLogger(__name__)


def run_pass(
    module: nn.Module,
    waves: Any,
    device: torch.device,
    batch_size: int,
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    label: str = "teacher logits",
) -> np.ndarray:
    """``fn`` (default: the module) of every clip of ``waves``, in order, as float32 rows."""
    module.eval()
    fn = fn or module
    out = []
    with torch.inference_mode(), StageProgress(label, total=len(waves), noun="clips", logger=log) as progress:
        for start in range(0, len(waves), batch_size):
            wave, _ = waves.batch(range(start, min(len(waves), start + batch_size)))
            out.append(fn(wave.to(device)).float().cpu().numpy())
            progress.update(advance=wave.shape[0])
    return np.concatenate(out).astype(np.float32)


def cached_array(path: Path, rows: int, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``np.load(path)`` when it holds ``rows`` rows, else compute and store it atomically."""
    if path.is_file():
        try:
            arr = np.load(path)
            if arr.shape[0] == rows:
                return arr
        except (OSError, ValueError) as err:
            log.warning("ignoring unreadable cache %s (%s); recomputing", path, err)
    arr = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".tmp.npy") as tmp:
        np.save(tmp, arr)
    return arr


def teacher_logits(
    module: nn.Module, waves: Any, device: torch.device, folder: Path, batch_size: int = 64
) -> np.ndarray:
    """The teacher's logits for every clip of ``waves``, cached in ``folder`` under a name that
    hashes the teacher's weights, its structure and front-end settings (``repr``), and the clip set."""
    ident = f"{weights_digest(module)}|{structure_hash(module)}|{Path(waves.npy_path).name}"
    path = folder / f"logits-{hashlib.sha256(ident.encode()).hexdigest()[:24]}.npy"
    return cached_array(path, len(waves), lambda: run_pass(module, waves, device, batch_size))


def member_logits(
    member: Teacher, waves: Any, device: torch.device, folder: Path, backbone: str, batch_size: int = 64
) -> np.ndarray:
    """One member's logits for every clip of ``waves``: a frozen backbone's (:meth:`Teacher.head_only`)
    are its head applied to the cached embeddings (the backbone never runs again for a clip it has
    embedded), any other member's come from a full pass, cached (:func:`teacher_logits`).

    Args:
        folder: the trained teacher's folder; embeddings are cached in its parent (the cache
            root), shared by every head trained on the same backbone.
        backbone: what the embeddings depend on besides the weights (:func:`~core.stages.teacher.plan.backbone_key`).
    """
    if not member.head_only():
        return teacher_logits(member, waves, device, folder, batch_size)
    emb = embeddings(member, waves, device, folder.parent, backbone, batch_size)
    member.eval()
    with torch.inference_mode():
        rows = [
            member.head(torch.from_numpy(emb[i : i + 4096]).to(device)).float().cpu().numpy()
            for i in range(0, len(emb), 4096)
        ]
    return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, member.num_classes), np.float32)


def ensemble_logits(
    ensemble: TeacherEnsemble, waves: Any, device: torch.device, folder: Path, backbone: str, batch_size: int = 64
) -> np.ndarray:
    """The ensemble's logits (:meth:`TeacherEnsemble.forward`'s log of the mean member probability),
    combined from each member's logits (:func:`member_logits`), so member scores and cross-fitting
    reuse them."""
    per = [member_logits(m, waves, device, folder, backbone, batch_size) for m in ensemble.teachers]
    if len(per) == 1:
        return per[0]
    logp = torch.from_numpy(np.stack(per)).log_softmax(-1)
    return (torch.logsumexp(logp, dim=0) - math.log(len(per))).numpy()


def out_of_fold_logits(
    ensemble: TeacherEnsemble,
    waves: Any,
    folds: Any,
    device: torch.device,
    folder: Path,
    backbone: str,
    batch_size: int = 64,
) -> np.ndarray:
    """Each clip's logits from the member trained without its fold (member m held out fold m)."""
    folds = np.asarray(folds)
    out = None
    for m, member in enumerate(ensemble.teachers):
        rows = np.flatnonzero(folds == m)
        mine = member_logits(member, waves, device, folder, backbone, batch_size)
        out = np.empty_like(mine) if out is None else out
        out[rows] = mine[rows]
    assert out is not None
    return out


def embeddings(
    member: Teacher, waves: Any, device: torch.device, folder: Path, backbone: str, batch_size: int = 64
) -> np.ndarray:
    """``member.embed`` of every clip, cached in ``folder/embeddings`` by (``backbone``, the
    member's weights without its head, its structure, the clip set)."""
    ident = f"{backbone}|{weights_digest(member, skip=is_head)}|{structure_hash(member)}|{Path(waves.npy_path).name}"
    path = folder / "embeddings" / f"emb-{hashlib.sha256(ident.encode()).hexdigest()[:24]}.npy"
    return cached_array(
        path, len(waves), lambda: run_pass(member, waves, device, batch_size, member.embed, "teacher embeddings")
    )


def group_folds(groups: Any, folds: int, seed: int) -> np.ndarray:
    """A fold index per clip, whole groups (instruments, as the dataset reports them) per fold, seeded."""
    groups = [str(g) for g in groups]
    names = sorted(set(groups))
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    fold_of = {names[i]: k % folds for k, i in enumerate(order)}
    return np.array([fold_of[g] for g in groups], dtype=np.int64)


def score_array(logits: np.ndarray, labels: np.ndarray) -> Scores:
    lt, yt = torch.from_numpy(np.asarray(logits, dtype=np.float32)), torch.from_numpy(np.asarray(labels))
    return score(lt, yt, F.cross_entropy(lt, yt).item())


def scores_from_logits(logits: dict[str, np.ndarray], data: Any) -> dict[str, float]:
    """``teacher_{val,test}_{acc,f1}`` from each split's logits."""
    out: dict[str, float] = {}
    for split, prefix in (("valid", "teacher_val"), ("test", "teacher_test")):
        s = score_array(logits[split], data.splits[split].labels)
        out.update({f"{prefix}_acc": s.acc, f"{prefix}_f1": s.f1})
    return out


__all__ = [
    "cached_array",
    "embeddings",
    "ensemble_logits",
    "group_folds",
    "member_logits",
    "out_of_fold_logits",
    "run_pass",
    "score_array",
    "scores_from_logits",
    "teacher_logits",
]
