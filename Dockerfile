# The echo server as a container image (Docker, podman, buildah).
#
#   docker build -t echo .
#   docker run --rm -p 8080:8080 echo
#
# Two stages: the first builds the project's wheel and installs it with its
# dependencies into a virtual environment; the second copies only that environment
# onto a fresh base, so no compiler, build tool, pip, source tree or .env reaches the
# image. Configuration is the server's own environment variables (README.md,
# "Configuration"); logs go to the container's output stream.
#
# BASE_IMAGE picks the base of both stages: any Debian-like image whose `python3` is
# Python 3.11 or newer with the venv module, and with useradd. The default is the
# official slim image; where no registry is reachable, a local image made from Debian
# packages works too (python3, python3-venv, ca-certificates; see docs/container.md).
# Both stages use the same base, so the environment's python link (/usr/local/bin or
# /usr/bin) resolves in the runtime stage as it did when it was made.
ARG BASE_IMAGE=python:3.11-slim-bookworm
# checkov:skip=CKV_DOCKER_7:the tag is in BASE_IMAGE's default above, which checkov does not expand

FROM ${BASE_IMAGE} AS build
SHELL ["/bin/sh", "-eu", "-c"]
WORKDIR /src
COPY pyproject.toml README.md ./
COPY echo/ echo/
# pip's own cache would only be thrown away with this stage.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheel is built from the copied sources, then installed like any released wheel
# (not editable). pip and setuptools leave afterwards: the image runs, it never installs.
RUN python3 -m venv /opt/echo \
    && /opt/echo/bin/python -m pip wheel --no-deps --wheel-dir /tmp/wheels . \
    && /opt/echo/bin/python -m pip install /tmp/wheels/echo-*.whl \
    && /opt/echo/bin/python -m pip uninstall --yes pip setuptools

FROM ${BASE_IMAGE}
SHELL ["/bin/sh", "-eu", "-c"]
# A fixed non-root user: Kubernetes' runAsNonRoot can check the numeric USER below.
RUN groupadd --system --gid 10001 echo \
    && useradd --system --uid 10001 --gid echo --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin echo
COPY --from=build /opt/echo /opt/echo
# Bytecode was compiled at install time; nothing is written at run time, so the root
# filesystem may be read-only (docker run --read-only, readOnlyRootFilesystem).
ENV PATH=/opt/echo/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# An empty working directory: the server reads a .env from it only if one is mounted.
WORKDIR /srv/echo
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
# GET /healthz on this container's own port (PORT, HOST and TLS as the server reads
# them). Kubernetes ignores this and uses the probes in deploy/kubernetes/.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["echo-healthcheck"]
ENTRYPOINT ["echo-server"]
