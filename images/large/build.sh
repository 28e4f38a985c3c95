#!/usr/bin/env bash
# Writes the build context of fnrt/large, a realistic image of about 200 MB compressed in
# several layers (real libraries, locales, documentation, an interpreter's library), for
# the pull and cache benchmarks. Usage: images/large/build.sh CONTEXT_DIR FIXTURE_BINARY
# It copies what this machine has of the list below; the bench prints the size it got.
set -euo pipefail
ctx=$1 fixture=$2
mkdir -p "$ctx"
cp "$fixture" "$ctx/fixture"
{
  echo "FROM scratch"
  n=0
  for d in /usr/lib/python3.11 /usr/lib/gcc /usr/share/locale /usr/share/doc /usr/share/vim /usr/share/perl; do
    [ -d "$d" ] || continue
    n=$((n + 1))
    mkdir -p "$ctx/l$n"
    cp -a "$d/." "$ctx/l$n/" 2>/dev/null || true
    echo "COPY l$n /data/l$n"
  done
  echo "COPY fixture /fixture"
  echo 'ENTRYPOINT ["/fixture", "echo"]'
} >"$ctx/Containerfile"
