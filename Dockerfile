FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . && useradd --system --uid 10001 registry \
    && mkdir /data && chown registry /data
USER registry
ENV PORT=5000 STORAGE_ROOT=/data
EXPOSE 5000
VOLUME ["/data"]
HEALTHCHECK --interval=15s --timeout=3s \
  CMD python -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/health/ready')"
CMD ["myregistry", "serve"]
