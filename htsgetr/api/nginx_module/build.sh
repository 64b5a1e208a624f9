#!/bin/sh
# Build ngx_http_htsgetr_direct_module.so (`htsgetr config nginx --verifier module`) for the
# nginx that will load it: OUT_DIR gets the .so.
#   build.sh NGINX_SRC OUT_DIR [configure flags...]
# NGINX_SRC: that nginx's source tree (nginx.org's tarball of `nginx -v`'s version, or
# Debian's nginx-dev: /usr/share/nginx/src, whose conf_flags are used when no flag is given).
# Needs a C compiler and the OpenSSL, PCRE2 and zlib headers (Debian: build-essential
# libssl-dev libpcre2-dev zlib1g-dev). The source tree is copied, not written to.
set -eu
src=$1
mkdir -p "$2"
out=$(cd "$2" && pwd)
shift 2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -R "$src/." "$work/"
cd "$work"
if [ $# -eq 0 ] && [ -f conf_flags ]; then
    # Debian's exact flags (a bash array) as words, without a shell to run them in
    set -- $(sed -n 's/^NGX_CONF_FLAGS=( *\(.*\) *)$/\1/p' conf_flags)
fi
./configure --with-compat "$@" --add-dynamic-module="$here" >configure.log 2>&1 \
    || { tail -30 configure.log >&2; exit 1; }
make -f objs/Makefile modules >make.log 2>&1 || { tail -30 make.log >&2; exit 1; }
cp objs/ngx_http_htsgetr_direct_module.so "$out/"
echo "$out/ngx_http_htsgetr_direct_module.so"
