# The segmentation service on an NVIDIA GPU: ONNX Runtime (CUDA 13, cuDNN 9), no torch.
# Build: docker build -f docker/service.Dockerfile -t fcn-service:gpu .
# Run:   docker run --gpus all -p 8000:8000 fcn-service:gpu
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
COPY pyproject.toml README.md ./
COPY model/ model/
COPY service/ service/
# onnxruntime-gpu runs on the CPU too, so the same image falls back when no GPU is given.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install '.[serve]' \
    && rm -rf /root/.cache

COPY models/demo/ /app/models/demo/

RUN useradd --system --uid 10001 --no-create-home fcn \
    && mkdir -p /models && chown fcn /models
USER fcn

ENV PATH=/opt/venv/bin:$PATH \
    FCN_MODEL_PATH=/app/models/demo/fcn8s.onnx \
    FCN_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider \
    FCN_HOST=0.0.0.0 \
    FCN_PORT=8000
# Bring your own model: mount it under /models and set FCN_MODEL_PATH=/models/<file>.onnx.
VOLUME ["/models"]
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status == 200 else 1)"]

CMD ["fcn-serve"]
