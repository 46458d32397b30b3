#!/usr/bin/env bash
# Downloads the wheels kaibuild needs into DIR, for a Linux machine with no
# network (from any OS: a Mac too), so kaibuild can be installed there with
#   pip install --no-index --find-links DIR -e <this repository>
#   scripts/wheelhouse.sh DIR [PYTHON] [ARCH]
# PYTHON: the offline machine's Python, as 3.11 (Debian 12) or 3.13 (Debian
# 13); default: this machine's python3. ARCH: x86_64 (default); aarch64 has
# no wheel of the `dockerfile` package.
set -euo pipefail
dir=$1
python=${2:-$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
arch=${3:-x86_64}
here=$(cd "$(dirname "$0")/.." && pwd)
requirements=$(python3 -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
  "$here/pyproject.toml")
# --only-binary with --platform: wheels for the offline machine, not this one.
# shellcheck disable=SC2086  # one requirement per word
python3 -m pip download --quiet --only-binary=:all: --platform "manylinux2014_$arch" --python-version "$python" \
  --dest "$dir" setuptools $requirements
echo "wheelhouse: wheels for Python $python on linux/$arch in $dir" >&2
echo "$dir"
