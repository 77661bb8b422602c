"""The DPTrainer component (see component.py):

from dp_tfx.components.dp_trainer import DPTrainer
"""

from dp_tfx.components.dp_trainer.component import DPTrainer

__all__ = ["DPTrainer"]
