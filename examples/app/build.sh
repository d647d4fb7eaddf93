#!/usr/bin/env bash
# Build the example app with nothing but the JDK: javac + jar, no Gradle, no dependencies.
#
#   ./build.sh            -> out/app.jar          (version from --app.version, $APP_VERSION, or "dev")
#   ./build.sh v2         -> out/app-v2.jar       (same code, "v2" baked in: one artifact per version)
#   ./build.sh v3 app.health=DOWN
#                         -> out/app-v3.jar       (with an application.properties baked in, like a
#                                                  Spring jar: defaults that --key=value arguments override)
#
# Idempotent and fast: it recompiles only when a source is newer than the classes, and repackages
# only when needed. Jars are written to a temp name and renamed, so an instance already running
# from a jar never sees it change under it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/out"
classes="$out/classes"
version="${1:-}"
shift || true
props=("$@")
for p in "${props[@]}"; do
    if [[ ! "$p" =~ ^[A-Za-z0-9._-]+=[^[:space:]]*$ ]]; then
        echo "build.sh: properties must look like key=value, got: $p" >&2
        exit 2
    fi
done
main_class="example.app.App"

if [[ -n "$version" && ! "$version" =~ ^[A-Za-z0-9._-]+$ ]]; then
    echo "build.sh: version must match [A-Za-z0-9._-]+, got: $version" >&2
    exit 2
fi

mkdir -p "$out"
# Builds started at the same time (parallel tests) take turns instead of compiling over each other.
exec 9>"$out/.lock"
flock 9

mkdir -p "$classes"
stamp="$classes/.stamp"
if [[ ! -f "$stamp" ]] || [[ -n "$(find "$here/src" -name '*.java' -newer "$stamp" -print -quit)" ]]; then
    rm -rf "$classes" && mkdir -p "$classes"
    javac --release 17 -Xlint:all -Werror -d "$classes" $(find "$here/src" -name '*.java')
    touch "$stamp"
fi

if [[ -n "$version" ]]; then
    jar_path="$out/app-$version.jar"
else
    jar_path="$out/app.jar"
fi

props_text="$(printf '%s\n' "${props[@]}")"
props_stamp="$out/.props-${version:-default}"
if [[ ! -f "$jar_path" ]] || [[ "$stamp" -nt "$jar_path" ]] || [[ "$(cat "$props_stamp" 2>/dev/null)" != "$props_text" ]]; then
    tmp="$(mktemp -d "$out/.jar.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    files=(-C "$classes" example)
    if [[ -n "$version" ]]; then
        printf '%s\n' "$version" > "$tmp/version.txt"
        files+=(-C "$tmp" version.txt)
    fi
    if [[ ${#props[@]} -gt 0 ]]; then
        printf '%s\n' "${props[@]}" > "$tmp/application.properties"
        files+=(-C "$tmp" application.properties)
    fi
    jar --create --file "$tmp/app.jar" --main-class "$main_class" "${files[@]}"
    mv -f "$tmp/app.jar" "$jar_path"
    printf '%s' "$props_text" > "$props_stamp"
fi
echo "$jar_path"
