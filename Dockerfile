# syntax=docker/dockerfile:1
# One image for the operator and every workload: iotenant operator|ingest|api|simulate|licence.
# The base is pinned by version; pin it by digest too in a build pipeline that can resolve one.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY workloads ./workloads
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist .
COPY requirements.lock ./
COPY scripts/install-wheel.sh /usr/local/bin/install-wheel
RUN PYTHON=python install-wheel /opt/iotenant /dist/iotenant-*.whl requirements.lock

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="iotenant" \
      org.opencontainers.image.description="Kubernetes operator giving every customer a private, licensed IoT stack; also its ingest, api and simulator services" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="iotenant"
RUN groupadd --gid 10001 iotenant && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin iotenant
# Only the virtual environment: no compiler, no pip cache, no sources.
COPY --from=build /opt/iotenant /opt/iotenant
ENV PATH=/opt/iotenant/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["iotenant"]
CMD ["--help"]
