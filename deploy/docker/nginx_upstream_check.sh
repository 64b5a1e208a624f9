#!/bin/sh
# The nginx-direct image's build step (nginx-direct.Dockerfile), checked without Docker:
#
#   1. nginx's own source tarball: Debian's .orig.tar.gz of the newest stable nginx, which is
#      nginx.org's release tarball as published, its SHA-256 taken from the signed Debian
#      archive (apt verifies the Sources index; this script verifies the tarball against it);
#   2. nginx built from it the way the official nginx images are (--with-compat);
#   3. htsgetr's module built by build.sh with no flags, exactly as the Dockerfile runs it;
#   4. the module verifier's end-to-end tests (tests/test_accel_direct.py, "module": signed
#      ranges, samtools/bcftools through nginx, tampered urls, secrets, valgrind) run against
#      that nginx and that module instead of Debian's.
#
#   deploy/docker/nginx_upstream_check.sh [PYTHON]      (`make nginx-upstream-check`)
#
# Needs the machine `make test` sets up (build tools, OpenSSL/PCRE2/zlib headers, valgrind)
# and network to deb.debian.org only. Apt's own configuration and state are not touched: the
# source index goes to build/nginx-upstream. NGINX_SUITE picks the Debian suite (trixie).
set -eu
py=${1:-.venv/bin/python}
suite=${NGINX_SUITE:-trixie}
root=$(pwd)
work=$root/build/nginx-upstream
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]" \
    "http://deb.debian.org/debian $suite main" >"$work/sources.list"
apt_get() {
    apt-get -q -o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" "$@"
}
apt_get update >/dev/null
# 'URL' name size SHA256:hash, per file of the source package: the .orig tarball's line
line=$(apt_get source --print-uris nginx | grep "_[0-9.]*\.orig\.tar\.gz' " | head -1)
[ -n "$line" ] || { echo "no nginx .orig tarball in Debian $suite" >&2; exit 1; }
url=$(echo "$line" | cut -d"'" -f2)
name=$(echo "$line" | awk '{print $2}')
sha=$(echo "$line" | sed -n 's/.*SHA256:\([0-9a-f]*\).*/\1/p')
[ -n "$sha" ] || { echo "no SHA-256 for $name" >&2; exit 1; }
version=$(echo "$name" | sed 's/^nginx_\(.*\)\.orig\.tar\.gz$/\1/')
tarball=$work/$name
if [ ! -f "$tarball" ]; then
    curl -fsSL "$url" -o "$tarball.part"
    mv "$tarball.part" "$tarball"
fi
echo "$sha  $tarball" | sha256sum -c --quiet - || { rm -f "$tarball"; exit 1; }
echo "nginx $version: nginx.org's tarball, via Debian $suite (SHA-256 checked)"

src=$work/nginx-$version
nginx=$work/nginx/sbin/nginx
if [ ! -x "$nginx" ] || ! "$nginx" -v 2>&1 | grep -q "nginx/$version\$"; then
    rm -rf "$src" && tar -xzf "$tarball" -C "$work"
    (cd "$src" && ./configure --prefix="$work/nginx" --with-compat --with-http_ssl_module \
        >configure.log 2>&1 && make -j"$(nproc)" >make.log 2>&1 && make install >/dev/null) \
        || { tail -30 "$src/configure.log" "$src/make.log" >&2 2>/dev/null; exit 1; }
fi
rm -rf "$work/modules"
sh "$root/htsgetr/api/nginx_module/build.sh" "$src" "$work/modules"
HTSGETR_TEST_NGINX=$nginx HTSGETR_TEST_NGINX_MODULES=$work/modules \
    "$py" -m pytest -q -p no:cacheprovider tests/test_accel_direct.py -k module
