"""The PrivacyAuditor component: `from dp_tfx.components.privacy_auditor import PrivacyAuditor` (see component.py)."""

from dp_tfx.components.privacy_auditor.component import PrivacyAuditor

__all__ = ["PrivacyAuditor"]
