"""PrivacyEvaluator executor with the PoissonBatches the DPTrainer streamed: a ledger that does
not match the batches' manifest, or spends more steps than they hold, is refused."""

import dataclasses
import json

from dp_tfx import poisson_batches, record_digest
from dp_tfx.components import testing
from dp_tfx.policy import PrivacyPolicy


def _streamed_ledger(runs_steps=(8,), dataset_size=200, batch_size=50):
  """A ledger of runs on one draw of Poisson batches, and the draw's manifest."""
  ledger = testing.make_ledger(
    dataset_size=dataset_size, batch_size=batch_size, noise_multiplier=1.0, steps=runs_steps[0]
  )
  plan = ledger.segments[0]
  draw = poisson_batches.new_draw(0, plan.planned_steps)
  for steps in runs_steps[1:]:
    ledger.segments.append(
      dataclasses.replace(ledger.segments[0], noisy_steps=steps, segment_id=f"later-{steps}")
    )
  for segment in ledger.segments:
    segment.dataset_fingerprint = f"poisson-draw:{draw}"
  manifest = poisson_batches.BatchManifest(
    dataset_size=dataset_size,
    batch_size=batch_size,
    sampling_rate=batch_size / dataset_size,
    steps=plan.planned_steps,
    first_step=0,
    last_step=plan.planned_steps,
    physical_batch_size=plan.physical_batch_size,
    shards=(poisson_batches.Shard("steps-0.tfrecord", 0, plan.planned_steps, 400, "0" * 64),),
    source="examples",
    split="train",
    draw=draw,
    data_digest=record_digest.of_records(b"%d" % i for i in range(dataset_size)),
  )
  return ledger, manifest


LENIENT = PrivacyPolicy(max_epsilon=20.0, delta=1e-5)


def test_a_ledger_of_the_streamed_batches_as_they_are_is_blessed(tmp_path):
  ledger, manifest = _streamed_ledger()
  testing.assert_blessed(
    testing.run_privacy_evaluator(ledger, LENIENT, tmp_path, poisson_batches=manifest)
  )


def test_a_ledger_with_another_n_than_the_batches_is_refused(tmp_path):
  ledger, manifest = _streamed_ledger(dataset_size=200)
  # PoissonBatchGen drew from 400 examples (q 0.125); the ledger claims the run's q was 0.25.
  larger = dataclasses.replace(
    manifest,
    dataset_size=400,
    sampling_rate=50 / 400,
    data_digest=record_digest.of_records(b"%d" % i for i in range(400)),
  )
  testing.assert_not_blessed(
    testing.run_privacy_evaluator(ledger, LENIENT, tmp_path, poisson_batches=larger),
    "the batches' manifest says",
  )


def test_steps_taken_twice_on_the_batches_are_refused(tmp_path):
  ledger, manifest = _streamed_ledger(runs_steps=(8, 3))  # 11 steps on a draw of 8
  testing.assert_not_blessed(
    testing.run_privacy_evaluator(ledger, LENIENT, tmp_path, poisson_batches=manifest),
    "a step was taken twice",
  )


def test_a_ledger_with_no_run_on_the_batches_is_refused(tmp_path):
  ledger, manifest = _streamed_ledger()
  other = dataclasses.replace(manifest, draw=poisson_batches.new_draw(0, manifest.steps))
  testing.assert_not_blessed(
    testing.run_privacy_evaluator(ledger, LENIENT, tmp_path, poisson_batches=other),
    "records no run on the Poisson batches",
  )


def test_batches_edited_after_poisson_batch_gen_recorded_them_are_refused(tmp_path):
  ledger, manifest = _streamed_ledger()

  def edit_manifest(ledger_path):  # what PoissonBatchGen recorded in MLMD stays as it was
    path = ledger_path.parent.parent / "batches" / poisson_batches.MANIFEST_FILE
    body = json.loads(path.read_text())
    body["split"] = "eval"
    path.write_text(json.dumps(body))

  testing.assert_not_blessed(
    testing.run_privacy_evaluator(
      ledger, LENIENT, tmp_path, poisson_batches=manifest, tamper=edit_manifest
    ),
    "not the ones PoissonBatchGen recorded",
  )


def test_steps_past_a_partial_draw_are_refused(tmp_path):
  # PoissonBatchGen drew steps 4-8 of an 8-step plan: 6 steps recorded on them is 2 too many.
  ledger, manifest = _streamed_ledger(runs_steps=(8, 3))
  ledger.segments[0].noisy_steps = 3
  draw = poisson_batches.new_draw(4, 8)
  for segment in ledger.segments:
    segment.dataset_fingerprint = f"poisson-draw:{draw}"
  partial = dataclasses.replace(
    manifest,
    draw=draw,
    first_step=4,
    shards=(poisson_batches.Shard("steps-4.tfrecord", 4, 8, 200, "0" * 64),),
  )
  testing.assert_not_blessed(
    testing.run_privacy_evaluator(ledger, LENIENT, tmp_path, poisson_batches=partial),
    "which hold 4: a step was taken twice",
  )
