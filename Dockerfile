# livesync-connector: a sidecar that publishes MongoDB change-stream events to Ably.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY connector ./connector
RUN pip install --no-cache-dir --prefix=/install ".[motor]"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HTTP_PORT=8080
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --no-create-home connector
COPY pipelines /pipelines
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HTTP_PORT','8080'), timeout=2)" || exit 1
ENTRYPOINT ["livesync-connector"]
CMD ["run"]
