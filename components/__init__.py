"""TFX components for DP training: DPTrainer and PrivacyEvaluator (installed as dp_tfx.components)."""
