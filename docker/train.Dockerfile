# Training, evaluation and export on NVIDIA GPUs: torch with CUDA, the `fcn` command.
# Build: docker build -f docker/train.Dockerfile -t fcn-train .
# Run:   docker run --gpus all --shm-size 8g -v $PWD/data:/data -v $PWD/runs:/runs fcn-train \
#            fcn train --data /data/VOCdevkit/VOC2012 --arch fcn32s --out /runs/fcn32s
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY client/ client/
COPY contract/ contract/
COPY model/ model/
COPY service/ service/
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install '.[train]' \
    && rm -rf /root/.cache

RUN useradd --system --uid 10001 --create-home fcn \
    && mkdir -p /data /runs && chown fcn /data /runs
USER fcn
ENV PATH=/opt/venv/bin:$PATH \
    TORCH_HOME=/runs/.torch
VOLUME ["/data", "/runs"]
WORKDIR /runs

ENTRYPOINT []
CMD ["fcn", "--help"]
