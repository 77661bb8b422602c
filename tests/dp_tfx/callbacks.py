"""Keras callbacks the training tests share."""

import keras


class MeanwhileAndStop(keras.callbacks.Callback):
  """After the third step, runs `meanwhile` (another run starting, say) and stops training."""

  def __init__(self, meanwhile):
    super().__init__()
    self._meanwhile = meanwhile

  def on_train_batch_end(self, batch, logs=None):
    if batch == 2:
      self._meanwhile()
      self.model.stop_training = True
