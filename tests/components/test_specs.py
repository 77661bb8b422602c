"""Each component spec says what its component does and what kind of execution it is, as TFX's
standard_component_specs do (MLMD and the Kubeflow IR record the annotation)."""

from tfx.types import system_executions

from dp_tfx.components import specs


def test_every_spec_has_a_docstring_and_its_tfx_execution_kind():
  kinds = {
    spec.__name__: spec.TYPE_ANNOTATION
    for spec in (
      specs.DPTrainerSpec,
      specs.PoissonBatchGenSpec,
      specs.PrivacyAuditorSpec,
      specs.PrivacyEvaluatorSpec,
    )
    if spec.__doc__ and spec.__doc__.strip()
  }
  assert kinds == {
    "DPTrainerSpec": system_executions.Train,
    "PoissonBatchGenSpec": system_executions.Process,
    "PrivacyAuditorSpec": system_executions.Evaluate,
    "PrivacyEvaluatorSpec": system_executions.Evaluate,
  }
