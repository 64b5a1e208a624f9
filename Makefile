# htsgetr: `make test` installs everything the tests need and runs them; `make serve` serves
# bundled example data. Works as root (CI) or as a user with sudo.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8080
HOST ?= 127.0.0.1
APT_PACKAGES := samtools bcftools tabix nginx-light libnginx-mod-http-js libnginx-mod-http-perl nginx-dev libssl-dev libpcre2-dev zlib1g-dev valgrind python3-venv python3-dev build-essential curl wrk
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
# test processes (pytest-xdist): most tests wait on real servers and clients, not the CPU,
# so 4 halve the run on 2 cores (~10 -> ~4 min); `make test PYTEST_WORKERS=0` runs in one
PYTEST_WORKERS ?= 4

.PHONY: test serve deps apt venv build nginx-upstream-check lint bench bench-check bench-baseline example-data clean \
	lambda-zip test-browser browser-deps

test: deps build
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

serve: deps build example-data
	$(PY) -m htsgetr serve --data-dir example-data --host $(HOST) --port $(PORT)

deps: apt $(VENV)/.installed

apt:
	@missing=""; for p in samtools bcftools tabix bgzip nginx gcc curl wrk valgrind; do \
	  command -v $$p >/dev/null 2>&1 || [ -x /usr/sbin/$$p ] || missing=1; done; \
	for m in js perl; do [ -e /usr/lib/nginx/modules/ngx_http_$${m}_module.so ] || missing=1; done; \
	for h in /usr/share/nginx/src/configure /usr/include/openssl/evp.h /usr/include/pcre2.h \
	  /usr/include/zlib.h; do [ -e $$h ] || missing=1; done; \
	$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing=1; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES); \
	fi

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# the compiled nginx-direct verifier, for this machine's nginx (Debian's nginx-dev), when
# its source is there (checked when building: `apt` may just have installed it): the tests
# and the bench load it from build/nginx
NGINX_MODULE := build/nginx/ngx_http_htsgetr_direct_module.so
NGINX_MODULE_SRC := $(wildcard htsgetr/api/nginx_module/*)

build: $(VENV)/.installed
	$(PY) setup.py -q build_ext --inplace
	@if [ -e /usr/share/nginx/src/configure ]; then $(MAKE) --no-print-directory $(NGINX_MODULE); fi

# (nginx.h holds nginx's version: a new nginx from apt gets a module built again)
$(NGINX_MODULE): $(NGINX_MODULE_SRC) $(wildcard /usr/share/nginx/src/src/core/nginx.h)
	sh htsgetr/api/nginx_module/build.sh /usr/share/nginx/src build/nginx

# the nginx-direct image's build step without Docker: nginx and htsgetr's module built from
# nginx.org's source (via Debian's archive, hash-checked) as nginx-direct.Dockerfile builds
# them, then the module verifier's end-to-end tests against that nginx (~2 min; CI runs it)
nginx-upstream-check: deps build
	sh deploy/docker/nginx_upstream_check.sh $(PY)

lint: deps build
	$(VENV)/bin/ruff check htsgetr tests bench
	$(VENV)/bin/mypy htsgetr

# every figure printed is also written to bench/results.json
bench: deps build
	$(PY) bench/run.py
	$(PY) bench/slow_clients.py

# CI: small data, ~2 min; fails on exactness below 100 % or a ratio more than 3x worse than
# bench/baseline.json (`make bench-baseline` rewrites it: run it on a quiet machine)
bench-check: deps build
	$(PY) bench/check.py

bench-baseline: deps build
	$(PY) bench/check.py --write-baseline

# AWS Lambda (python3.11, x86_64): build/htsgetr-lambda.zip, dependencies as manylinux
# wheels + the extensions built here; LAMBDA_CONFIG=file bundles a configuration as
# htsgetr.toml (README "AWS Lambda" says what the zip assumes)
lambda-zip: deps build
	$(PY) deploy/lambda/build_zip.py $(if $(LAMBDA_CONFIG),--config $(LAMBDA_CONFIG))

# igv.js in headless Chromium against a real server (tests/browser): Debian's chromium and
# node, npm igv and playwright-core pinned, installed under build/browser (no browser download)
IGV_VERSION := 3.8.10
PLAYWRIGHT_CORE_VERSION := 1.65.1
BROWSER_DIR := build/browser
BROWSER_STAMP := $(BROWSER_DIR)/.npm-igv-$(IGV_VERSION)-playwright-core-$(PLAYWRIGHT_CORE_VERSION)

test-browser: deps build browser-deps
	HTSGETR_BROWSER=1 HTSGETR_NODE_MODULES=$(CURDIR)/$(BROWSER_DIR)/node_modules \
	  $(PY) -m pytest tests/browser $(PYTEST_ARGS)

# only what is missing: a node from elsewhere (NodeSource's nodejs holds npm itself and
# conflicts with Debian's npm package) stays as it is
browser-deps: $(BROWSER_STAMP)
	@missing=""; command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(BROWSER_STAMP):
	@command -v npm >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm; }
	mkdir -p $(BROWSER_DIR)
	cd $(BROWSER_DIR) && npm install --no-audit --no-fund --no-save --prefix . \
	  igv@$(IGV_VERSION) playwright-core@$(PLAYWRIGHT_CORE_VERSION)
	touch $@

example-data: $(VENV)/.installed
	$(PY) -m htsgetr.examples example-data

clean:
	rm -rf build $(VENV) htsgetr/*.so htsgetr/_ranges.c htsgetr/_records.c example-data .pytest_cache
