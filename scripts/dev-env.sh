# Source this from the repository root: sets up (once) and enters the
# environment kaibuild's demo and tests use, then installs kaibuild.
#   source scripts/dev-env.sh
_kaibuild_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_kaibuild_env=$(bash "$_kaibuild_root/scripts/setup-env.sh") || return 1
eval "$_kaibuild_env"
python3 -m pip install -q -e "$_kaibuild_root[test]" 2>&1 | grep -v -e 'Running pip as the' -e 'notice' >&2
unset _kaibuild_root _kaibuild_env
