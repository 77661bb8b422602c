# The image the Kubeflow steps of `dp-tfx pipeline --runner kubeflow` run in:
#   docker build -t REGISTRY/dp-tfx:latest . && docker push REGISTRY/dp-tfx:latest
#   dp-tfx pipeline --runner kubeflow --container-image REGISTRY/dp-tfx:latest
# TFX's base image carries TFX 1.21 and its entry point; this adds dp_tfx (and so
# dp_tfx.components / dp_tfx.pipelines, which the compiled steps import).
FROM tensorflow/tfx:1.21.0
WORKDIR /dp_tfx
COPY setup.py README.md ./
COPY dp_tfx ./dp_tfx
COPY components ./components
COPY pipelines ./pipelines
RUN python -m pip install --no-cache-dir .
