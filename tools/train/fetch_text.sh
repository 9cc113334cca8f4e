#!/bin/bash
# Fetch training text and a held-out human-text corpus from Debian packages.
#   tools/train/fetch_text.sh [WORKDIR]        (default WORKDIR=/tmp/epwa-train)
# Training text: python3.11-doc (reStructuredText sources of the Python manuals),
#   fortunes (quotes), debian-reference-en (HTML, tags stripped).
# Held-out text: jargon-text (The Jargon File), a DIFFERENT package, cleaned and cut
#   into paragraphs -> data/heldout/jargon.txt (one paragraph per blank-line block).
# Writes WORKDIR/train.txt and WORKDIR/versions.txt (package versions used).
set -euo pipefail
WORK=${1:-/tmp/epwa-train}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=/usr/bin/python3
TRAIN_PKGS="python3.11-doc fortunes fortunes-min debian-reference-en"
HELD_PKG=jargon-text
mkdir -p "$WORK/debs" "$WORK/x"
cd "$WORK/debs"
for p in $TRAIN_PKGS $HELD_PKG; do
  if ! ls ${p}_*.deb >/dev/null 2>&1; then
    apt-get download "$p" 2>/dev/null || { apt-get update -qq; apt-get download "$p"; }
  fi
done
: > "$WORK/versions.txt"
for p in $TRAIN_PKGS $HELD_PKG; do
  deb=$(ls ${p}_*.deb | sort | tail -1)
  echo "$p $(dpkg-deb -f "$deb" Version) $deb" >> "$WORK/versions.txt"
  mkdir -p "$WORK/x/$p"
  [ -e "$WORK/x/$p/.done" ] || { dpkg -x "$deb" "$WORK/x/$p"; touch "$WORK/x/$p/.done"; }
done
cat "$WORK/versions.txt"
"$PY" "$ROOT/tools/train/prepare_text.py" "$WORK" "$ROOT/data/heldout"
