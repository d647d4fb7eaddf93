#!/usr/bin/env bash
# Build the example app's container image for a version, from local files only (no registry):
#
#   ./image.sh v2                        -> image roomescape:v2 (prints its id)
#   ./image.sh v3 app.health=DOWN        -> roomescape:v3 with those properties baked into its jar
#   IMAGE=shop ./image.sh v2             -> image shop:v2
#   ENGINE=podman ./image.sh v2          -> built with podman (default: docker when its engine
#                                           answers, at DOCKER_HOST or the default socket; else podman)
#
# The JRE (jlink: java.base, java.management, jdk.httpserver), the host's glibc and loader and
# busybox are gathered once into out/image/; the jar (build.sh) is the last layer, so a new version
# builds in about a second once the lower layers are cached by the engine.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/out"
ctx="$out/image"
version="${1:-}"
if [[ -z "$version" ]]; then
    echo "usage: image.sh VERSION [key=value ...]" >&2
    exit 2
fi
shift
image="${IMAGE:-roomescape}:$version"

engine="${ENGINE:-}"
if [[ -z "$engine" ]]; then
    if command -v docker >/dev/null 2>&1 && docker version >/dev/null 2>&1; then
        engine=docker
    elif command -v podman >/dev/null 2>&1; then
        engine=podman
    else
        echo "image.sh: no container engine: docker's does not answer and podman is not installed" >&2
        exit 2
    fi
fi

jar="$("$here/build.sh" "$version" "$@")"

mkdir -p "$out"
exec 8>"$out/.image.lock"
flock 8

# The JRE and the files from the host, made once (the layers below the jar never change).
if [[ ! -f "$ctx/.ready" ]]; then
    busybox="$(command -v busybox || echo /bin/busybox)"
    if ! "$busybox" true 2>/dev/null || [[ "$(ldd "$busybox" 2>&1 || true)" != *"not a dynamic executable"* ]]; then
        echo "image.sh: needs a static busybox (Debian: apt-get install busybox-static)" >&2
        exit 2
    fi
    rm -rf "$ctx" && mkdir -p "$ctx"
    jdk_bin="$(dirname "$(readlink -f "$(command -v javac)")")"
    "$jdk_bin/jlink" --add-modules java.base,java.management,jdk.httpserver \
        --strip-debug --no-header-files --no-man-pages --compress=2 --output "$ctx/jre"
    root="$ctx/rootfs"
    mkdir -p "$root/bin" "$root/tmp" "$root/etc"
    chmod 1777 "$root/tmp"
    cp "$busybox" "$root/bin/busybox"
    ln -s busybox "$root/bin/sh"
    echo "root:x:0:0:root:/:/bin/sh" > "$root/etc/passwd"
    # java's shared libraries: what ldd says the launcher and every library of the JRE need
    libs="$( { ldd "$ctx/jre/bin/java"; find "$ctx/jre/lib" -name '*.so' -exec ldd {} \; ; } 2>/dev/null \
        | grep -o '/[^ ]*' | grep -v "^$ctx" | sort -u)"
    for lib in $libs; do
        cp -L --parents "$lib" "$root/"
    done
    touch "$ctx/.ready"
fi

cp "$jar" "$ctx/app.jar.tmp" && mv -f "$ctx/app.jar.tmp" "$ctx/app.jar"
"$engine" build -q -f "$here/Dockerfile" -t "$image" "$ctx" 2> >(grep -v -e "DEPRECATED: The legacy builder" \
    -e "Install the buildx component" -e "https://docs.docker.com/go/buildx/" -e '^\s*$' >&2) | tail -n 1
