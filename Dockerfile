# htsgetr: GA4GH htsget server.   docker build -t htsgetr .
#
#   docker run -p 8080:8080 -v /path/to/data:/data:ro htsgetr          (IDs: files under /data)
#   docker run -p 9000:9000 -v $PWD/htsgetr.toml:/etc/htsgetr/site.toml:ro \
#              -e HTSGET_CONFIG=/etc/htsgetr/site.toml htsgetr             (your file: its port,
#                                                                          locations, TLS, ...)
# README "Container" has the S3 and TLS variants. Nothing on the command line overrides the
# configuration: the defaults are the bundled deploy/docker/htsgetr.toml (port 8080, /data)
# and HTSGET_HOST=0.0.0.0; HTSGET_* variables (-e) beat the file, as everywhere.

# ---- build: compile the Cython extension and install everything into one venv
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/htsgetr
ENV PATH=/opt/htsgetr/bin:$PATH
COPY pyproject.toml setup.py README.md ./
COPY htsgetr ./htsgetr
# the wheel pip builds lives in a temporary directory, and the venv alone goes on: no
# wheel, no compiler and no source tree reach the final image
RUN pip install --no-cache-dir .

# ---- runtime
FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 htsgetr \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin \
       htsgetr \
    && mkdir -p /data /etc/htsgetr
COPY --from=build /opt/htsgetr /opt/htsgetr
COPY deploy/docker/htsgetr.toml /etc/htsgetr/htsgetr.toml
# gunicorn faces clients directly, so its workers are gevent (`worker_class`, the default):
# a connection that trickles or stalls holds a greenlet, not one of a few threads, and
# header/body/send deadlines cut it (README "Slow clients"). `htsgetr serve` lifts the
# open-files limit up to the hard one: `docker run --ulimit nofile=65536:65536` where the
# hard limit is low.
ENV PATH=/opt/htsgetr/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HTSGET_CONFIG=/etc/htsgetr/htsgetr.toml \
    HTSGET_HOST=0.0.0.0
USER 10001:10001
EXPOSE 8080
# reads the same configuration as the server: its port, http or https, then GET /healthz
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "htsgetr.healthcheck"]
ENTRYPOINT ["htsgetr"]
CMD ["serve"]
