# The segmentation service on an NVIDIA GPU: ONNX Runtime (CUDA 13, cuDNN 9), no torch.
# linux/amd64 only (PyPI has no aarch64 wheel of onnxruntime-gpu); the host needs an NVIDIA
# driver >= 580, as the base image requires cuda>=13.0.
# Build: docker build --platform linux/amd64 -f docker/service.Dockerfile -t fcn-service:gpu .
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
# Dependencies first, from pyproject.toml alone (empty packages stand in for the code), so
# that a change of the code reuses this layer. onnxruntime-gpu is pinned to the release
# built for the base image's CUDA major; it runs on the CPU too, when no GPU is given.
COPY pyproject.toml ./
RUN mkdir client contract model service \
    && touch README.md client/__init__.py contract/__init__.py model/__init__.py \
        service/__init__.py \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install '.[serve]' 'onnxruntime-gpu~=1.31.0' \
    && /opt/venv/bin/pip uninstall -y fcn-segmentation \
    && rm -rf /root/.cache build ./*.egg-info README.md client contract model service

COPY README.md LICENSE ./
COPY client/ client/
COPY contract/ contract/
COPY model/ model/
COPY service/ service/
RUN /opt/venv/bin/pip install --no-deps . \
    && rm -rf /root/.cache build ./*.egg-info

COPY models/demo/ /app/models/demo/

RUN useradd --system --uid 10001 --no-create-home fcn \
    && mkdir -p /models && chown fcn /models
USER fcn

# The user has no home: CUDA's kernel cache goes to /tmp (writable, also under Kubernetes).
ENV PATH=/opt/venv/bin:$PATH \
    CUDA_CACHE_PATH=/tmp/cuda-cache \
    FCN_MODEL_PATH=/app/models/demo/fcn8s.onnx \
    FCN_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider \
    FCN_HOST=0.0.0.0 \
    FCN_PORT=8000
# Bring your own model: mount it under /models and set FCN_MODEL_PATH=/models/<file>.onnx.
VOLUME ["/models"]
EXPOSE 8000

# Asks /readyz on the port FCN_PORT names.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-m", "service.healthcheck"]

CMD ["fcn-serve"]
