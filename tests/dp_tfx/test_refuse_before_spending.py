"""A run that could never be blessed, or never take a step, is refused before its first counted
step: no segment in the history, no weight changed. Calibration aims at the total."""

import keras
import numpy as np
import pytest

import dp_tfx
from dp_tfx import accounting
from dp_tfx.ledger import PrivacyLedger, read_history
from dp_tfx.plan import TrainingPlan
from dp_tfx.policy import PolicyRefusal, PrivacyPolicy, refuse_unless_blessable
from tests.dp_tfx import models

N = 40
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
POLICY = PrivacyPolicy(max_epsilon=5.0, delta=1e-5)


def _dp_model(history, loss=LOSS, policy=POLICY, **config):
  fields = dict(l2_norm_clip=0.3, noise_multiplier=1.0, batch_size=8, steps=10, delta=1e-5)
  fields.update(config)
  dp_model = dp_tfx.make_private(
    models.dense_model(), dp_tfx.DPConfig(**fields), ledger_history=history, policy=policy
  )
  dp_model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
  return dp_model


def _history_files(directory):
  return {path.name: path.read_bytes() for path in directory.glob("*")}


def _assert_refused_without_spending(dp_model, history, x, y, match):
  before = _history_files(history)
  with pytest.raises(PolicyRefusal, match=match) as refusal:
    dp_model.fit(x, y, verbose=0)
  assert "nothing was spent" in str(refusal.value)
  assert _history_files(history) == before  # no segment, not even one of zero steps
  assert int(dp_model.noisy_steps.numpy()) == 0
  return refusal.value


@pytest.mark.parametrize(
  "config, policy, match",
  [
    (dict(noise_multiplier=0.0), POLICY, "without noise"),
    (dict(sampling="shuffle"), POLICY, "shuffled"),
    (dict(seed=3), POLICY, "fixed seed"),
    ({}, PrivacyPolicy(max_epsilon=5.0, delta=0.5), r"delta 0.5 exceeds 1/N = 0.025"),
    (
      dict(steps=10),
      PrivacyPolicy(max_epsilon=1.0, delta=1e-5),
      "exceeds the policy's max_epsilon 1",
    ),
  ],
  ids=["sigma-0", "shuffled", "seeded", "delta-over-1/N", "over-max-epsilon"],
)
def test_a_run_the_policy_could_never_bless_is_refused_before_its_first_step(
  tmp_path, config, policy, match
):
  x, y = models.batch_for("dense", N, seed=1)
  dp_model = _dp_model(tmp_path, policy=policy, **config)
  _assert_refused_without_spending(dp_model, tmp_path, x, y, match)
  assert read_history(tmp_path) == []


class _KilledBeforeTheFirstStep(keras.callbacks.Callback):
  def on_train_begin(self, logs=None):
    raise KeyboardInterrupt("killed")


@pytest.mark.parametrize(
  "config", [dict(seed=3), dict(sampling="shuffle")], ids=["seeded", "shuffled"]
)
def test_a_run_interrupted_before_its_first_step_locks_no_one_out(tmp_path, config):
  # The review's case: a seeded run that the policy allowed, interrupted before its first step,
  # left a finished segment of 0 steps, and every later default-policy run was refused "training
  # used a fixed seed" forever, though no seeded step ever ran.
  x, y = models.batch_for("dense", N, seed=1)
  allowing = PrivacyPolicy(max_epsilon=5.0, delta=1e-5, allow_seeded=True, require_poisson=False)
  interrupted = _dp_model(tmp_path, policy=allowing, **config)
  with pytest.raises(KeyboardInterrupt):
    interrupted.fit(x, y, verbose=0, callbacks=[_KilledBeforeTheFirstStep()])
  (segment,) = read_history(tmp_path)
  assert segment.noisy_steps == 0 and segment.finished_at
  later = _dp_model(tmp_path)  # the default policy: no seed, Poisson sampling
  later.fit(x, y, verbose=0)
  assert later.privacy_ledger.noisy_steps == 10


def test_segments_of_no_steps_are_judged_on_nothing_but_a_pending_one_counts(tmp_path):
  odd = dict(seed=3, sampling="shuffle", noise_multiplier=0.0)
  size_over_one_over_delta = 200_000  # delta 1e-5 > 1/N: refused had it taken a step
  plan = TrainingPlan.from_config(
    dp_tfx.DPConfig(
      batch_size=8, steps=10, delta=1e-5, **{k: v for k, v in odd.items() if k != "seed"}
    ),
    size_over_one_over_delta,
  )
  refused = PrivacyLedger.open_history(tmp_path, size_over_one_over_delta, "sha256:odd")
  refused.start_segment(plan, seeded=True)
  pending = PrivacyLedger.open_history(tmp_path, N, "sha256:next")
  this_plan = TrainingPlan.from_config(
    dp_tfx.DPConfig(noise_multiplier=1.0, batch_size=8, steps=10, delta=1e-5), N
  )
  with pytest.raises(PolicyRefusal) as refusal:  # its reservation is a step about to run
    refuse_unless_blessable(POLICY, pending.if_trained(this_plan, 10))
  for reason in ("shuffled", "fixed seed", "without noise", "delta 1e-05 exceeds 1/N = 5e-06"):
    assert reason in str(refusal.value)
  refused.finish_segment()  # ended without a step
  decision = refuse_unless_blessable(
    POLICY, PrivacyLedger.open_history(tmp_path, N, "sha256:next").if_trained(this_plan, 10)
  )
  assert decision.blessed and decision.delta == 1e-5


def test_a_run_that_would_take_the_history_over_the_policy_is_refused(tmp_path):
  x, y = models.batch_for("dense", N, seed=1)
  generous = PrivacyPolicy(max_epsilon=100.0, delta=1e-5)
  first = _dp_model(tmp_path, policy=generous, steps=30)
  first.fit(x, y, verbose=0)
  spent = first.privacy_ledger.epsilon(1e-5)
  # Alone the next run is within the limit (it spends what the first did); after it, it is not.
  both = accounting.compute_epsilon(sampling_rate=8 / N, noise_multiplier=1.0, steps=60, delta=1e-5)
  limit = (spent + both) / 2
  second = _dp_model(tmp_path, policy=PrivacyPolicy(max_epsilon=limit, delta=1e-5), steps=30)
  weights = [w.numpy().copy() for w in second.model.weights] if second.model.built else None
  error = _assert_refused_without_spending(
    second, tmp_path, x[:-1], y[:-1], "exceeds the policy's max_epsilon"
  )
  assert f"after the 30 already recorded in the ledger history {tmp_path})" in str(error)
  assert [s.noisy_steps for s in read_history(tmp_path)] == [30]
  if weights is not None:
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(weights, second.model.weights))


def test_a_run_within_the_policy_trains(tmp_path):
  x, y = models.batch_for("dense", N, seed=1)
  dp_model = _dp_model(tmp_path)
  dp_model.fit(x, y, verbose=0)
  assert [s.noisy_steps for s in read_history(tmp_path)] == [10]
  assert dp_model.epsilon() <= POLICY.max_epsilon


def test_a_loss_with_one_value_per_batch_fails_before_a_counted_step(tmp_path):
  x, y = models.batch_for("dense", N, seed=1)
  dp_model = _dp_model(tmp_path, loss=lambda y_true, y_pred: keras.ops.mean(y_pred))
  with pytest.raises(ValueError, match="one value for the whole batch"):
    dp_model.fit(x, y, verbose=0)
  assert read_history(tmp_path) == []


def test_metrics_that_do_not_fit_the_labels_fail_before_a_counted_step(tmp_path):
  x, y = models.batch_for("dense", N, seed=1)
  dp_model = dp_tfx.make_private(
    models.dense_model(),
    dp_tfx.DPConfig(noise_multiplier=1.0, batch_size=8, steps=5, delta=1e-5),
    ledger_history=tmp_path,
  )
  dp_model.compile(
    optimizer="sgd", loss=LOSS, metrics=[keras.metrics.AUC(multi_label=True, num_labels=7)]
  )
  with pytest.raises(Exception):
    dp_model.fit(x, y, verbose=0)
  assert read_history(tmp_path) == []


def test_target_epsilon_is_the_totals_once_the_history_holds_runs(tmp_path):
  x, y = models.batch_for("dense", N, seed=1)
  target = 4.0
  first = _dp_model(tmp_path, noise_multiplier=None, target_epsilon=target, steps=10, policy=None)
  first.fit(x, y, verbose=0)
  assert first.epsilon() == pytest.approx(target, rel=0.02) and first.epsilon() <= target
  second = _dp_model(
    tmp_path, noise_multiplier=None, target_epsilon=target + 1.0, steps=10, policy=None
  )
  second.fit(x, y, verbose=0)
  total = second.privacy_ledger.epsilon(1e-5)
  # sigma was calibrated for what was left of the target: the total (both runs) meets it.
  assert second.plan.noise_multiplier > first.plan.noise_multiplier
  assert total <= target + 1.0 and total == pytest.approx(target + 1.0, rel=0.02)


def test_a_target_the_history_has_already_spent_is_a_clear_error(tmp_path):
  x, y = models.batch_for("dense", N, seed=1)
  first = _dp_model(tmp_path, noise_multiplier=0.6, steps=20, policy=None)
  first.fit(x, y, verbose=0)
  assert first.epsilon() > 1.0
  second = _dp_model(tmp_path, noise_multiplier=None, target_epsilon=1.0, policy=None)
  with pytest.raises(ValueError, match="not reachable.*after what the ledger already records"):
    second.fit(x, y, verbose=0)
  assert [s.noisy_steps for s in read_history(tmp_path)] == [20]


def test_an_unsigned_record_under_a_policy_requiring_signatures_is_found_before_training(
  tmp_path, monkeypatch
):
  from dp_tfx import signing
  from dp_tfx.ledger import LedgerIntegrityError

  x, y = models.batch_for("dense", N, seed=1)
  monkeypatch.delenv(signing.KEY_FILE_ENV, raising=False)
  monkeypatch.delenv(signing.KEY_ENV, raising=False)
  _dp_model(tmp_path, policy=None, steps=3).fit(x, y, verbose=0)  # written without a key
  monkeypatch.setenv(signing.KEY_ENV, "a-ledger-key-of-32-bytes-or-more")
  signed_policy = PrivacyPolicy(max_epsilon=50.0, delta=1e-5, require_signature=True)
  with pytest.raises(LedgerIntegrityError, match="written without a key"):
    _dp_model(tmp_path, policy=signed_policy).fit(x, y, verbose=0)
  assert [s.noisy_steps for s in read_history(tmp_path)] == [3]
