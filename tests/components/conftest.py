"""Fixtures of the component tests."""

import pytest

from dp_tfx import signing


@pytest.fixture
def ledger_key(monkeypatch):
  """A ledger key set in the environment (and no key file): ledgers and records are signed."""
  monkeypatch.delenv(signing.KEY_FILE_ENV, raising=False)
  monkeypatch.setenv(signing.KEY_ENV, "a-ledger-key-of-32-bytes-or-more")
  return monkeypatch
