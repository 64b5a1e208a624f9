# nginx with htsgetr's compiled nginx-direct verifier (htsgetr/api/nginx_module), for the
# Helm chart's `nginx.verifier: module` (or any nginx in front with accel = "nginx-direct"):
#
#   docker build -f deploy/docker/nginx-direct.Dockerfile -t htsgetr-nginx .
#   docker build -f deploy/docker/nginx-direct.Dockerfile \
#       --build-arg NGINX_IMAGE=nginx:1.27-alpine -t htsgetr-nginx .
#
# A dynamic module loads only into the nginx it was compiled for, so it is compiled here
# against that image's own version (nginx.org's source of $NGINX_VERSION, which the nginx
# images set) with --with-compat, as those images' nginx was built. The final image is the
# base image plus one file: modules/ngx_http_htsgetr_direct_module.so.
ARG NGINX_IMAGE=nginxinc/nginx-unprivileged:1.27-alpine

# ---- build: the module, against the same nginx
# hadolint ignore=DL3006
FROM ${NGINX_IMAGE} AS build
# hadolint ignore=DL3002
USER 0
SHELL ["/bin/sh", "-eu", "-c"]
# hadolint ignore=DL3018
RUN apk add --no-cache gcc libc-dev make openssl-dev pcre2-dev zlib-dev linux-headers curl
COPY htsgetr/api/nginx_module /src/nginx_module
RUN curl -fsSL "https://nginx.org/download/nginx-${NGINX_VERSION}.tar.gz" -o /tmp/nginx.tar.gz \
    && tar -xzf /tmp/nginx.tar.gz -C /tmp \
    && sh /src/nginx_module/build.sh "/tmp/nginx-${NGINX_VERSION}" /out

# ---- the base image and the module
# hadolint ignore=DL3006
FROM ${NGINX_IMAGE}
COPY --from=build /out/ngx_http_htsgetr_direct_module.so /usr/lib/nginx/modules/
