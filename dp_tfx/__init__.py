"""dp_tfx: differentially private training (DP-SGD) for Keras 3 and TFX."""

from dp_tfx.version import __version__
