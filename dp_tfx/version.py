"""The dp_tfx version, recorded in every privacy ledger."""

__version__ = "0.1.0"
