# runtime-core with the sklearn and xgboost runtimes, laid out for KServe: the model's files
# are expected in /mnt/models (KServe's storage initializer puts them there) and settings
# come from RUNTIME_CORE_* (or MLServer's) environment variables. See deploy/kserve/.
#
#   docker build -t runtime-core .
#   docker run -p 8080:8080 -v "$PWD/my-model:/mnt/models:ro" -e RUNTIME_CORE_MODEL_NAME=my-model runtime-core
FROM python:3.11-slim

# libgomp: the OpenMP runtime that scikit-learn's and xgboost's wheels link against.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/runtime-core
COPY pyproject.toml README.md ./
COPY runtime_core ./runtime_core
COPY runtimes ./runtimes
RUN pip install --no-cache-dir . ./runtimes/sklearn ./runtimes/xgboost

RUN useradd --create-home --uid 1000 runtime-core \
    && mkdir -p /mnt/models \
    && chown runtime-core /mnt/models
USER 1000

ENV PYTHONUNBUFFERED=1 \
    RUNTIME_CORE_HOST=0.0.0.0 \
    RUNTIME_CORE_HTTP_PORT=8080 \
    RUNTIME_CORE_GRPC_PORT=8081

EXPOSE 8080 8081

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/live' % os.environ.get('RUNTIME_CORE_HTTP_PORT', '8080'), timeout=4)"

ENTRYPOINT ["runtime-core"]
CMD ["start", "/mnt/models"]
