"""The PrivacyEvaluator component (see component.py):

from dp_tfx.components.privacy_evaluator import PrivacyEvaluator
"""

from dp_tfx.components.privacy_evaluator.component import PrivacyEvaluator

__all__ = ["PrivacyEvaluator"]
