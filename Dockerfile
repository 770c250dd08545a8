# The project's one image: the worker by default; the compose file also runs the TapRaise
# sandbox (`python -m sandbox`) and the HTTP gateway (`python -m starter serve`) from it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Metadata first, then the sources: the install layer is rebuilt only when one of them changes.
COPY pyproject.toml README.md ./
COPY tapraise ./tapraise
COPY sandbox ./sandbox
COPY activities ./activities
COPY workflows ./workflows
COPY starter ./starter
COPY devstack ./devstack
COPY worker.py ./
RUN pip install . \
    && useradd --create-home --uid 10001 tapraise \
    && mkdir -p /data/sandbox \
    && chown tapraise /data/sandbox

# Never root at run time. /data/sandbox is owned by the user, so a fresh named volume mounted
# there is too.
USER tapraise

CMD ["python", "-m", "worker"]
