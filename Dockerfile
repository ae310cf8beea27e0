# The lenet-hpo image: CPU-only torch and the project; `python -m lenet_hpo` is the entry
# point (search, dashboard, ...).  Built by `make up` / `docker compose build`; CI has no
# Docker engine, so tests/test_compose.py checks this file and docker-compose.yml as text.
FROM python:3.11-slim

# Keep in step with TORCH_VERSION / TORCHVISION_VERSION in the Makefile.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# torch from the CPU wheel index: no CUDA libraries, a much smaller image.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
# The dependencies (this layer changes only with pyproject.toml), then the project.
COPY pyproject.toml README.md* ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['postgres']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY lenet_hpo ./lenet_hpo
COPY studies/*.toml ./studies/
RUN pip install --no-deps .

# Not root; datasets go to /app/data (a volume in docker-compose.yml).
RUN useradd --create-home --uid 1000 lenet && mkdir -p /app/data && chown lenet /app/data
USER lenet
ENV LENET_HPO_DATA_DIR=/app/data

ENTRYPOINT ["python", "-m", "lenet_hpo"]
CMD ["--help"]
