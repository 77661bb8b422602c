"""Test set-up: quiet TensorFlow, CPU only, deterministic seeds per test."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import pytest  # noqa: E402

from dp_tfx import budget  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _budgets_of_this_module(tmp_path_factory):
  """Each test module's runs keep their privacy budgets apart from other modules' (and from the
  user's own, under ~/.local/state): the module's shared pipeline runs see this root."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv(budget.BUDGET_ROOT_ENV, str(tmp_path_factory.mktemp("budgets")))
    yield


@pytest.fixture(autouse=True)
def _budgets_of_this_test(tmp_path_factory, monkeypatch):
  """Each test's own runs start with empty budgets (a test that composes runs does so inside)."""
  monkeypatch.setenv(budget.BUDGET_ROOT_ENV, str(tmp_path_factory.mktemp("budgets")))


@pytest.fixture(autouse=True)
def _seeded():
  keras.utils.set_random_seed(1234)
  yield
