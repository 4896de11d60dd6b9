"""The training engine: the :class:`~core.engine.trainer.Trainer` and the pieces it is made of.

``model`` (waveform -> log-mel -> network), ``loop`` (batches, one epoch, evaluation), ``optim``
(optimizer and schedule), ``settings`` (what the loop reads), ``distributed`` (devices, DDP),
``state`` / ``checkpoint`` / ``structure`` (what an epoch commits, written safely, pruned layouts
included), ``seeding`` and ``metrics``. Importing it needs torch only: no MLflow, no Hydra.
"""
