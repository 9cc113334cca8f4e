#!/bin/bash
# Assemble human-written English paragraphs from Debian packages: the negatives (texts no model
# wrote) on which the watermark detector's false-positive rate is measured.
#   tools/watermark/make_human_corpus.sh [OUT_DIR]     (default OUT_DIR=data/human in the repo)
# Environment: WORK (downloads and unpacked packages, default /tmp/epwa-human), MAX_TOTAL (the
#   most texts to keep, default 20000; 0 keeps all).
# Writes OUT_DIR/human.jsonl ({"text", "source"} per line) and OUT_DIR/versions.txt (package,
# version, licence) and prints a summary. The package list lives in human_corpus.py (SOURCES);
# none of them is training text or the held-out jargon-text (see tools/train/fetch_text.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$ROOT/data/human}
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac   # relative to where the user stands, not $WORK
WORK=${WORK:-/tmp/epwa-human}
PY=/usr/bin/python3
PKGS=$("$PY" "$ROOT/tools/watermark/human_corpus.py" --packages)
mkdir -p "$WORK/debs" "$WORK/x"
cd "$WORK/debs"

# Download each package once; a later run reuses the .deb, so it rebuilds the same corpus even
# after the archive has moved on. Delete $WORK/debs to take the current versions.
for p in $PKGS; do
  if ! ls "${p}"_*.deb >/dev/null 2>&1; then
    apt-get download "$p" 2>/dev/null || { apt-get update -qq; apt-get download "$p"; }
  fi
done

# The newest .deb of each package (by Debian version order, not file name order), its version,
# and an unpacked copy that is renewed only when that version changes.
: > "$WORK/packages.txt"
for p in $PKGS; do
  deb= ver=
  for d in "${p}"_*.deb; do
    v=$(dpkg-deb -f "$d" Version)
    if [ -z "$deb" ] || dpkg --compare-versions "$v" gt "$ver"; then deb=$d ver=$v; fi
  done
  echo "$p $ver $WORK/debs/$deb" >> "$WORK/packages.txt"
  if [ "$(cat "$WORK/x/$p/.version" 2>/dev/null)" != "$ver" ]; then
    rm -rf "$WORK/x/$p"
    mkdir -p "$WORK/x/$p"
    dpkg-deb -x "$deb" "$WORK/x/$p"
    echo "$ver" > "$WORK/x/$p/.version"
  fi
done
cat "$WORK/packages.txt"

"$PY" "$ROOT/tools/watermark/human_corpus.py" --max-total "${MAX_TOTAL:-20000}" "$WORK" "$OUT"
echo "versions and licences ($OUT/versions.txt):"
cat "$OUT/versions.txt"
echo "done in ${SECONDS}s"
