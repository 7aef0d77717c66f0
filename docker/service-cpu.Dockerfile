# The segmentation service on CPU only: a slim Python base, ONNX Runtime, no torch.
# Build: docker build -f docker/service-cpu.Dockerfile -t fcn-service:cpu .
# Run:   docker run -p 8000:8000 fcn-service:cpu
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY model/ model/
COPY service/ service/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install '.[serve]' \
    && rm -rf /root/.cache

COPY models/demo/ /app/models/demo/

RUN useradd --system --uid 10001 --no-create-home fcn \
    && mkdir -p /models && chown fcn /models
USER fcn

ENV PATH=/opt/venv/bin:$PATH \
    FCN_MODEL_PATH=/app/models/demo/fcn8s.onnx \
    FCN_PROVIDERS=CPUExecutionProvider \
    FCN_HOST=0.0.0.0 \
    FCN_PORT=8000
VOLUME ["/models"]
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status == 200 else 1)"]

CMD ["fcn-serve"]
