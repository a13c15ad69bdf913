# livesync-connector: a sidecar that publishes MongoDB change-stream events to Ably.
# Every package comes from a hash-pinned lock (`make lock` regenerates both files from pyproject.toml):
# requirements/docker-build.txt builds the project's wheel, requirements/docker.txt is what runs.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements/docker-build.txt requirements/docker.txt ./requirements/
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/docker-build.txt \
 && pip install --no-cache-dir --require-hashes --no-deps --prefix=/install -r requirements/docker.txt
COPY pyproject.toml README.md ./
COPY connector ./connector
# The dependencies are all in /install already: --no-deps keeps pip from resolving anything unhashed.
RUN pip install --no-cache-dir --no-deps --no-build-isolation --prefix=/install .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HTTP_PORT=8080
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --no-create-home connector
COPY pipelines /pipelines
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HTTP_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["livesync-connector"]
CMD ["run"]
