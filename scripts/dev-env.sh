# Source this from the repository root: sets up (once) and enters the
# environment kaibuild's demo and tests use, then installs kaibuild.
#   source scripts/dev-env.sh
_kaibuild_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_kaibuild_env=$(bash "$_kaibuild_root/scripts/setup-env.sh") || return 1
eval "$_kaibuild_env"
python3 -m pip install -q -e "$_kaibuild_root[test]" >/dev/null 2>"${TMPDIR:-/tmp}/kaibuild-pip.log" \
  || { cat "${TMPDIR:-/tmp}/kaibuild-pip.log" >&2; return 1; }
unset _kaibuild_root _kaibuild_env
