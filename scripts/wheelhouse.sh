#!/usr/bin/env bash
# Downloads the wheels kaibuild needs into DIR, for a Linux machine with no
# network (from any OS: a Mac too), so kaibuild can be installed there with
#   pip install --no-index --find-links DIR -e <this repository>
#   scripts/wheelhouse.sh DIR [ARCH (x86_64 | aarch64: default x86_64)] [PYTHON (default 3.11)]
set -euo pipefail
dir=$1 arch=${2:-x86_64} python=${3:-3.11}
here=$(cd "$(dirname "$0")/.." && pwd)
requirements=$(python3 -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
  "$here/pyproject.toml")
# --only-binary with --platform: wheels for the offline machine, not this one.
python3 -m pip download --quiet --only-binary=:all: --platform "manylinux2014_$arch" --python-version "$python" \
  --dest "$dir" setuptools $requirements
echo "$dir"
