# `fcn pretrained` in a container: fetches a published FCN (fcn pretrained --list), converts
# it and writes a verified ONNX file. CPU torch only: the conversion needs no GPU.
# Used by docker/compose.pretrained.yml as the step before the service starts; by hand:
# Build: docker build -f docker/pretrained.Dockerfile -t fcn-pretrained .
# Run:   docker run --rm -v fcn-models:/pretrained -v fcn-cache:/cache fcn-pretrained \
#            fcn pretrained voc-fcn8s --out /pretrained
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Dependencies first, from pyproject.toml alone (empty packages stand in for the code), so
# that a change of the code reuses this layer. torch and torchvision come from PyTorch's CPU
# index (a fraction of the CUDA wheels' size), at the versions pyproject.toml allows.
COPY pyproject.toml ./
RUN mkdir client contract model service \
    && touch README.md client/__init__.py contract/__init__.py model/__init__.py \
        service/__init__.py \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu \
        'torch>=2.6,<2.15' 'torchvision>=0.21,<0.30' \
    && /opt/venv/bin/pip install '.[train]' \
    && /opt/venv/bin/pip uninstall -y fcn-segmentation \
    && rm -rf /root/.cache build ./*.egg-info README.md client contract model service

COPY README.md LICENSE ./
COPY client/ client/
COPY contract/ contract/
COPY model/ model/
COPY service/ service/
RUN /opt/venv/bin/pip install --no-deps . \
    && rm -rf /root/.cache build ./*.egg-info

# Named volumes mounted here start with this ownership, so the user below can write them.
RUN useradd --system --uid 10001 --no-create-home fcn \
    && mkdir -p /pretrained /cache && chown fcn /pretrained /cache
USER fcn
ENV PATH=/opt/venv/bin:$PATH \
    FCN_CACHE=/cache
VOLUME ["/pretrained", "/cache"]

ENTRYPOINT []
CMD ["fcn", "pretrained", "--list"]
