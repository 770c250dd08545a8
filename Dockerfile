# The project's images. The last stage, `production` (the default target), carries what runs in
# production and nothing else: the worker by default, the HTTP gateway (`python -m starter
# serve`) and the codec server for the Web UI (`tapraise-calls-codec`). The `sandbox` stage is
# the local TapRaise stand-in, for the compose file's dev profile. Neither image carries the
# benchmarks, the tests, the development tools or the Temporal binaries (those are extras).
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7 AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The dependencies first, exactly as locked (every file checked against its hash): this layer is
# rebuilt only when the lock changes, not on every source edit.
COPY requirements/production.txt ./requirements/
RUN pip install --require-hashes -r requirements/production.txt \
    && useradd --create-home --uid 10001 tapraise \
    && mkdir -p /data/sandbox \
    && chown tapraise /data/sandbox

# The project as a wheel, built with the locked setuptools (no unpinned build environment is
# fetched). What the wheel holds is pyproject.toml's list of packages, the one list of what
# production runs (tests/test_packaging.py checks it). The sources stay in this stage: the
# images below receive the wheel only.
FROM base AS wheel
COPY . ./
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /dist .

# The sandbox runs from its source folder (it is not part of the installed package) and needs
# only locked third-party packages; /data/sandbox is owned by the user, so a fresh named volume
# mounted there is too.
FROM base AS sandbox
COPY sandbox ./sandbox
USER tapraise
CMD ["python", "-m", "sandbox", "--host", "0.0.0.0", "--port", "8081", "--data-dir", "/data/sandbox"]

# Never root at run time. The dependencies are in place already: the wheel goes in alone.
FROM base AS production
RUN --mount=type=bind,from=wheel,source=/dist,target=/dist \
    pip install --no-deps /dist/*.whl
USER tapraise
CMD ["python", "-m", "worker"]
