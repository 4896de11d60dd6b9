"""The teacher stage (see :mod:`~core.stages.teacher.stage`) and how the teacher teaches
(:mod:`~core.stages.teacher.targets`)."""

from core.stages.teacher.ensemble import TeacherEnsemble
from core.stages.teacher.fit import TeacherError
from core.stages.teacher.passes import embeddings, group_folds, teacher_logits
from core.stages.teacher.plan import TeacherPlan, initial_weights, weights_digest
from core.stages.teacher.stage import PreparedTeacher, prepare_teacher
from core.stages.teacher.targets import Distillation, OfflineTargets, OnlineTargets

__all__ = [
    "Distillation",
    "OfflineTargets",
    "OnlineTargets",
    "PreparedTeacher",
    "TeacherEnsemble",
    "TeacherError",
    "TeacherPlan",
    "embeddings",
    "group_folds",
    "initial_weights",
    "prepare_teacher",
    "teacher_logits",
    "weights_digest",
]
