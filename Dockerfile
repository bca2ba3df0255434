# gan-deploy for NVIDIA GPU hosts: CUDA + TensorRT + the package with its gpu, serve and triton extras.
#
#   docker build -t gan-deploy .
#   docker run --rm --gpus all gan-deploy                          # prints `gan-deploy --help`
#   docker run --rm --gpus all -v "$PWD/models:/opt/gan-deploy/models" -v "$PWD/out:/data" \
#       gan-deploy gan-deploy generate -n 10000 --backend tensorrt --engine models/x.fp16.engine --out /data/x
#
# More (serving, Ray, Triton): docs/serving.md.
#
# Base: NVIDIA's TensorRT container (CUDA, cuDNN, TensorRT and its Python bindings, Python 3.12).
# Not NVIDIA's PyTorch container: its torch is NVIDIA's own build of another version, while gan-deploy pins
# torch==2.13.0 exactly (the release its ONNX export and eager reference are tested with), so pip would
# replace that torch with PyPI's anyway, or with --no-deps keep a torch the project never ran. Here pip
# installs torch 2.13.0 from PyPI, whose Linux wheel is a CUDA build carrying its own CUDA libraries.
FROM nvcr.io/nvidia/tensorrt:25.01-py3

# PIP_BREAK_SYSTEM_PACKAGES: the container's Python is the system one (PEP 668 marks it externally managed);
# this image is single-purpose, so installing into it is what we want.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TQDM_DISABLE=1

WORKDIR /opt/gan-deploy

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when the dependencies change.
COPY pyproject.toml ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; x = p['optional-dependencies']; print('\n'.join(p['dependencies'] + x['gpu'] + x['serve'] + x['triton']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The package itself (its shipped models are package data in gan_deploy/assets/). Outputs go to /data.
COPY . .
RUN pip install --no-cache-dir --no-deps . \
    && gan-deploy --help > /dev/null \
    && groupadd --gid 10001 gan \
    && useradd --no-log-init --create-home --uid 10001 --gid 10001 gan \
    && mkdir -p /data \
    && chown -R gan /data

# numeric, so Kubernetes' runAsNonRoot and hosts without this user can check it
USER 10001:10001
WORKDIR /data
# `gan-deploy serve --host 0.0.0.0` listens here
EXPOSE 8000
CMD ["gan-deploy", "--help"]
