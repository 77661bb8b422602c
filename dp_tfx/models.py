"""Reference Keras models that the demo, the pipelines and the benchmarks share."""

import keras


def tutorial_cnn(num_classes: int = 10) -> keras.Model:
  """The CNN of the TensorFlow Privacy MNIST tutorial (26k parameters), for 28x28x1 images."""
  return keras.Sequential(
    [
      keras.Input((28, 28, 1)),
      keras.layers.Conv2D(16, 8, strides=2, padding="same", activation="relu"),
      keras.layers.MaxPool2D(2, 1),
      keras.layers.Conv2D(32, 4, strides=2, padding="valid", activation="relu"),
      keras.layers.MaxPool2D(2, 1),
      keras.layers.Flatten(),
      keras.layers.Dense(32, activation="relu"),
      keras.layers.Dense(num_classes),
    ],
    name="tutorial_cnn",
  )
