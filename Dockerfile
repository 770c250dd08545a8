# The project's images. The last stage, `production` (the default target), carries what runs in
# production and nothing else: the worker by default, and the HTTP gateway
# (`python -m starter serve`). The `sandbox` stage adds the local TapRaise stand-in on top, for
# the compose file's sandbox service; neither image carries the benchmarks, the tests or the
# Temporal binaries.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Metadata first, then the sources: the install layer is rebuilt only when one of them changes.
COPY pyproject.toml README.md ./
COPY tapraise ./tapraise
COPY activities ./activities
COPY workflows ./workflows
COPY starter ./starter
COPY gateway ./gateway
COPY devstack ./devstack
COPY worker.py ./
RUN pip install . \
    && rm -rf tapraise activities workflows starter gateway devstack worker.py build ./*.egg-info \
    && useradd --create-home --uid 10001 tapraise \
    && mkdir -p /data/sandbox \
    && chown tapraise /data/sandbox

# The sandbox runs from its source folder (it is not part of the installed package); /data/sandbox
# is owned by the user, so a fresh named volume mounted there is too.
FROM base AS sandbox
COPY sandbox ./sandbox
USER tapraise
CMD ["python", "-m", "sandbox", "--host", "0.0.0.0", "--port", "8081", "--data-dir", "/data/sandbox"]

# Never root at run time.
FROM base AS production
USER tapraise
CMD ["python", "-m", "worker"]
