# The segmentation service on CPU only: a slim Python base, OpenVINO (bf16 where the CPU has
# it; FCN_RUNTIME=onnxruntime for ONNX Runtime instead), no torch.
# linux/amd64 only (PyPI has no aarch64 wheel of onnxruntime-gpu, which runs on CPUs too).
# Build: docker build --platform linux/amd64 -f docker/service-cpu.Dockerfile -t fcn-service:cpu .
# Run:   docker run -p 8000:8000 fcn-service:cpu
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Dependencies first, from pyproject.toml alone (empty packages stand in for the code), so
# that a change of the code reuses this layer. The same onnxruntime-gpu as the GPU image, and
# the OpenVINO release the benchmarks ran (BENCHMARKS.md).
COPY pyproject.toml ./
RUN mkdir client contract model service \
    && touch README.md client/__init__.py contract/__init__.py model/__init__.py \
        service/__init__.py \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install '.[serve,openvino]' 'onnxruntime-gpu~=1.31.0' \
        'openvino~=2026.4.0' \
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

ENV PATH=/opt/venv/bin:$PATH \
    FCN_MODEL_PATH=/app/models/demo/fcn8s.onnx \
    FCN_PROVIDERS=CPUExecutionProvider \
    FCN_HOST=0.0.0.0 \
    FCN_PORT=8000
VOLUME ["/models"]
EXPOSE 8000

# Asks /readyz on the port FCN_PORT names.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-m", "service.healthcheck"]

CMD ["fcn-serve"]
