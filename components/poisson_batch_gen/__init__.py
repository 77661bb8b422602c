"""The PoissonBatchGen component (see component.py):

from dp_tfx.components.poisson_batch_gen import PoissonBatchGen
"""

from dp_tfx.components.poisson_batch_gen.component import PoissonBatchGen

__all__ = ["PoissonBatchGen"]
