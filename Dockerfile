# dropzone in a container, meant as a sidecar of an SFTP server sharing the inbox/outbox volumes.
#
#   docker build -t dropzone .
#   docker run -v ./config.yaml:/etc/dropzone/config.yaml:ro -e MARKETO_CLIENT_ID=... \
#              -v ./marketo_client_secret:/run/secrets/marketo_client_secret:ro \
#              -v inbox:/data/inbox -v outbox:/data/outbox -v state:/var/lib/dropzone dropzone
#
# Runs as UID/GID 10001: the SFTP user that uploads must have the same UID (or share GID 10001).
# The configuration needs an `http:` section (127.0.0.1:9108 is enough) for the HEALTHCHECK.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a venv with dropzone and its dependencies (all pure Python or wheels) ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/dropzone
# Only what the package needs: the build context may hold a .venv, state, caches.
COPY pyproject.toml README.md /src/
COPY dropzone /src/dropzone
RUN /opt/dropzone/bin/pip install --no-cache-dir /src \
    && /opt/dropzone/bin/dropzone --version

# ---- runtime: the same base (the venv's python links to it), no build stage leftovers ----
FROM ${PYTHON_IMAGE}
ARG DROPZONE_UID=10001
ARG DROPZONE_GID=10001
# GnuPG decrypts PGP drops (pgp: in the configuration): gpg and its agent (which keeps the key in
# state_dir), without the rest of the gnupg suite (dirmngr, gpgsm, ...).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gpg gpg-agent \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid "${DROPZONE_GID}" dropzone \
    && useradd --uid "${DROPZONE_UID}" --gid "${DROPZONE_GID}" --no-create-home \
        --home-dir /var/lib/dropzone --shell /usr/sbin/nologin dropzone \
    && install -d -o dropzone -g dropzone -m 0750 /var/lib/dropzone \
    && install -d -o dropzone -g dropzone -m 0775 /data/inbox /data/outbox \
    && install -d -m 0755 /etc/dropzone
COPY --from=build /opt/dropzone /opt/dropzone
ENV PATH=/opt/dropzone/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER ${DROPZONE_UID}:${DROPZONE_GID}
WORKDIR /var/lib/dropzone
# Declared after the directories exist, so a fresh named volume starts owned by 10001.
VOLUME ["/data/inbox", "/data/outbox", "/var/lib/dropzone"]
EXPOSE 9108
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=2m --retries=3 \
    CMD ["dropzone", "health", "--config", "/etc/dropzone/config.yaml"]
# Exec form: dropzone is PID 1 and gets SIGTERM itself (it stops claiming, persists, exits 0).
ENTRYPOINT ["dropzone"]
CMD ["run", "--config", "/etc/dropzone/config.yaml"]
