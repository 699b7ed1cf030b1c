# Two stages: the first builds wheels of the registry and of its dependencies at the versions in
# constraints.txt (the ones CI tests); the second installs only those wheels, so /app keeps no source,
# no build tree and no compiler.
FROM python:3.11-slim AS build
WORKDIR /build
COPY pyproject.toml README.md constraints.txt ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
COPY constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir --no-index --find-links /wheels -c /tmp/constraints.txt myregistry \
    && rm -rf /wheels /tmp/constraints.txt \
    && useradd --system --uid 10001 registry && mkdir /data && chown registry /data
# The registry runs as uid 10001: a bind-mounted data directory must be writable by it
# (chown 10001 DIR), or every push fails with 503 "Permission denied".
USER registry
WORKDIR /home/registry
ENV PORT=5000 STORAGE_ROOT=/data
EXPOSE 5000
VOLUME ["/data"]
# Probes the address and port the registry's own settings name (environment or .env).
HEALTHCHECK --start-period=20s --interval=15s --timeout=3s --retries=3 \
  CMD python -c "from urllib.request import urlopen; from entrypoints.settings import Settings; s = Settings(); \
host = '127.0.0.1' if s.host in ('0.0.0.0', '::', '') else s.host; urlopen(f'http://{host}:{s.port}/health/ready', timeout=2)"
CMD ["myregistry", "serve"]
