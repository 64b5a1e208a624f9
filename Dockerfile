# htsgetr: GA4GH htsget server. Build: docker build -t htsgetr .
# Run:   docker run -p 8080:8080 -v /path/to/data:/data htsgetr
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md ./
COPY htsgetr ./htsgetr
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 htsgetr
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
EXPOSE 8080
# gunicorn faces clients directly, so its workers are gevent (`worker_class`, the default;
# not set here, so a mounted config file can still choose): a connection that trickles or
# stalls holds a greenlet, not one of a few threads, and header/body/send deadlines cut it
# (README "Slow clients"). `htsgetr serve` lifts the open-files limit up to the hard one:
# `docker run --ulimit nofile=65536:65536` where the hard limit is low.
ENV HTSGET_DATA_DIR=/data
HEALTHCHECK --interval=30s --timeout=3s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/service-info', timeout=2)"]
ENTRYPOINT ["htsgetr"]
CMD ["serve", "--data-dir", "/data", "--host", "0.0.0.0", "--port", "8080"]
