"""The PrivacyAuditor component (see component.py):

from dp_tfx.components.privacy_auditor import PrivacyAuditor
"""

from dp_tfx.components.privacy_auditor.component import PrivacyAuditor

__all__ = ["PrivacyAuditor"]
