"""The DPTrainer component: `from dp_tfx.components.dp_trainer import DPTrainer` (see component.py)."""

from dp_tfx.components.dp_trainer.component import DPTrainer

__all__ = ["DPTrainer"]
