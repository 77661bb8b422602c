"""Taps of the recurrent layers SimpleRNN, LSTM and GRU (reset_after, Keras's default).

At every time step these layers compute pre-activations z_t = x_t W + h_{t-1} U + b (GRU: the
input and the recurrent projections separately, each with its own bias row), so each kernel's
per-example gradient is a sum over time of outer products, like a Dense layer's over T positions:
W's is sum_t x_t g_t^T, U's sum_t h_{t-1} g_t^T, b's sum_t g_t, where g_t is the gradient of the
loss with respect to z_t through every later step. The tap gets all g_t from the one backward
pass by adding a zero "probe" tensor [B, T, width] to the pre-activations inside the recurrence
(the gradient with respect to the probe is exactly the g_t's), and records x_t and h_{t-1}.

The tap replaces only the layer's inner loop (Keras's RNN.call keeps initial states, masking,
go_backwards, return_sequences/return_state); the step maths mirror Keras 3's cells. Dropout
(masks the tap would have to reproduce), stateful layers and GRU with reset_after=False (whose
candidate gate multiplies the state before the recurrent kernel) take the vectorised fallback.
"""

from __future__ import annotations

import abc

import keras
import tensorflow as tf
from keras.src import backend as keras_backend

from dp_tfx.clipping.base import LayerTap, register_tap
from dp_tfx.clipping.linear import outer_products


class RecurrentTap(LayerTap):
  """A recurrent layer whose input and recurrent pre-activations share one probe (SimpleRNN,
  LSTM); subclasses give the cell's step."""

  # Pre-activation values per unit: 1 for SimpleRNN, 4 gates for LSTM, 3 + 3 for GRU.
  _WIDTH_PER_UNIT = 1

  @classmethod
  def for_layer(cls, layer, options):
    cell = layer.cell
    if layer.stateful or getattr(cell, "dropout", 0) or getattr(cell, "recurrent_dropout", 0):
      return None
    return cls(layer)

  @property
  def variables(self) -> list:
    return [
      v for v in (self.kernel(), self.layer.cell.recurrent_kernel, self.bias()) if v is not None
    ]

  def kernel(self):
    return self.layer.cell.kernel

  def bias(self):
    return self.layer.cell.bias if self.layer.cell.use_bias else None

  # RNN.call looks up `inner_loop` on the layer per call; everything around it stays Keras's.
  PATCHED_METHOD = "inner_loop"

  def _input_projection(self, sequences, probe):
    """What the loop takes per time step: x_t W + b + probe_t for every t at once (one large
    matmul outside the loop instead of T small ones inside)."""
    cell = self.layer.cell
    projected = keras.ops.matmul(sequences, cell.kernel) + probe
    return projected + cell.bias if cell.use_bias else projected

  @abc.abstractmethod
  def _step(self, projected, states) -> tuple:
    """The cell's maths for one time step from its input projection: (output h_t, new states)."""

  def forward(self, sequences, initial_state, mask, training=False):
    """Keras's RNN inner loop, returning (last output, outputs, states), with the probe."""
    del training  # only dropout depends on it, and layers with dropout are not tapped
    cell = self.layer.cell
    steps = sequences.shape[1]
    time = steps if steps is not None else tf.shape(sequences)[1]
    width = self._WIDTH_PER_UNIT * cell.units
    probe = tf.zeros(tf.stack([tf.shape(sequences)[0], time, width]), sequences.dtype)
    probe.set_shape([None, steps, width])
    self.watch(probe)

    def step(projected, states):
      # The output carries h_{t-1} too: the state entering each step, which masked steps
      # (kept states, zero or repeated outputs) make different from the previous output.
      output, new_states = self._step(projected, states)
      return tf.concat([output, states[0]], axis=-1), new_states

    # Keras's own loop (no public API exposes it), so that masking, go_backwards and unroll
    # behave exactly as in the layer.
    last, outputs, states = keras_backend.rnn(
      step,
      self._input_projection(sequences, probe),
      list(initial_state),
      go_backwards=self.layer.go_backwards,
      mask=mask,
      unroll=self.layer.unroll,
      input_length=steps,
      zero_output_for_mask=self.layer.zero_output_for_mask,
      return_all_outputs=True,
    )
    previous = outputs[..., cell.units :]  # in the order of processing
    if self.layer.go_backwards:
      previous = tf.reverse(previous, axis=[1])
    self.records.append((sequences, previous, probe))
    return last[..., : cell.units], outputs[..., : cell.units], states

  def _blocks(self, grads) -> list:
    """[(inputs, their probe's gradients)] per probe: the inputs whose outer products with the
    gradients make the kernels' gradients, [x, h_{t-1}] for the one probe here."""
    x, h = [tf.concat([record[i] for record in self.records], axis=1) for i in (0, 1)]
    return [([x, h], tf.concat(grads, axis=1))]

  def _block_widths(self) -> list:
    """The widths of each block's inputs (in `_blocks`' order)."""
    cell = self.layer.cell
    return [[cell.kernel.shape[0], cell.units]]

  def prepare(self, output_grads):
    """One OuterProducts per probe, of [inputs..., 1] (the 1 for the bias) with its gradients:
    the kernels and the bias of a probe share one Gram matrix of the gradients in ghost norms,
    and one matmul in the sums (two thirds of the clipping of the character LSTM at batch 512
    when each kernel had its own)."""
    blocks = []
    for inputs, g in self._blocks(output_grads):
      if self.bias() is not None:
        inputs = inputs + [tf.ones_like(g[..., :1])]
      blocks.append(outer_products(tf.concat(inputs, axis=-1), g))
    return tuple(blocks)

  def norm_method(self, prepared) -> str:
    return "ghost" if all(block.ghost for block in prepared) else "per_example"

  def squared_norms(self, prepared):
    return tf.add_n([block.squared_norms() for block in prepared])

  def _variable_parts(self, rows: list) -> list:
    """The variables' parts, from each block's [..., rows, j] part: the kernels' rows in turn,
    then the bias row(s)."""
    kernels, biases = [], []
    for block_rows, widths in zip(rows, self._block_widths()):
      pieces = tf.split(block_rows, [*widths, 1] if self.bias() is not None else widths, axis=-2)
      kernels += pieces[: len(widths)]
      biases += [piece[..., 0, :] for piece in pieces[len(widths) :]]
    if not biases:
      return kernels
    bias = biases[0] if len(biases) == 1 else tf.stack(biases, axis=-2)
    return kernels + [bias]

  def weighted_sum(self, prepared, weights):
    return self._variable_parts([block.weighted_sum(weights) for block in prepared])

  def per_example(self, prepared):
    return self._variable_parts([block.per_example() for block in prepared])


class SimpleRNNTap(RecurrentTap):
  def _step(self, projected, states):
    cell = self.layer.cell
    z = projected + keras.ops.matmul(states[0], cell.recurrent_kernel)
    h = cell.activation(z) if cell.activation is not None else z
    return h, [h]


class LSTMTap(RecurrentTap):
  _WIDTH_PER_UNIT = 4

  def _step(self, projected, states):
    cell = self.layer.cell
    h_tm1, c_tm1 = states[0], states[1]
    z = projected + keras.ops.matmul(h_tm1, cell.recurrent_kernel)
    z_i, z_f, z_c, z_o = tf.split(z, 4, axis=-1)
    i, f = cell.recurrent_activation(z_i), cell.recurrent_activation(z_f)
    c = f * c_tm1 + i * cell.activation(z_c)
    h = cell.recurrent_activation(z_o) * cell.activation(c)
    return h, [h, c]


class GRUTap(RecurrentTap):
  """GRU with reset_after: the input and recurrent projections each get a probe (the first and
  second halves of it), since the reset gate scales the recurrent candidate after its kernel."""

  _WIDTH_PER_UNIT = 6

  @classmethod
  def for_layer(cls, layer, options):
    return super().for_layer(layer, options) if layer.cell.reset_after else None

  def _input_projection(self, sequences, probe):
    """[x_t W + b_input + probe_x_t, probe_h_t] for every t."""
    cell = self.layer.cell
    probe_x, probe_h = tf.split(probe, 2, axis=-1)
    matrix_x = keras.ops.matmul(sequences, cell.kernel) + probe_x
    if cell.use_bias:
      matrix_x = matrix_x + cell.bias[0]
    return tf.concat([matrix_x, probe_h], axis=-1)

  def _step(self, projected, states):
    cell = self.layer.cell
    h_tm1 = states[0]
    matrix_x, probe_h = tf.split(projected, 2, axis=-1)
    matrix_h = keras.ops.matmul(h_tm1, cell.recurrent_kernel) + probe_h
    if cell.use_bias:
      matrix_h = matrix_h + cell.bias[1]
    x_z, x_r, x_h = tf.split(matrix_x, 3, axis=-1)
    h_z, h_r, h_h = tf.split(matrix_h, 3, axis=-1)
    z = cell.recurrent_activation(x_z + h_z)
    r = cell.recurrent_activation(x_r + h_r)
    candidate = cell.activation(x_h + r * h_h)
    h = z * h_tm1 + (1 - z) * candidate
    return h, [h]

  def _blocks(self, grads):
    x, h = [tf.concat([record[i] for record in self.records], axis=1) for i in (0, 1)]
    g_x, g_h = tf.split(tf.concat(grads, axis=1), 2, axis=-1)
    return [([x], g_x), ([h], g_h)]

  def _block_widths(self):
    cell = self.layer.cell
    return [[cell.kernel.shape[0]], [cell.units]]


register_tap(keras.layers.SimpleRNN, SimpleRNNTap)
register_tap(keras.layers.LSTM, LSTMTap)
register_tap(keras.layers.GRU, GRUTap)
