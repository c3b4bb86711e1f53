#!/usr/bin/env bash
# make lint: the OpenAI field audit's drift check. Every request field the
# official SDKs send for chat completions and legacy completions must have a
# row in docs/openai-compatibility.md, and the doc must name the SDK versions
# it was audited against: the Python package pinned for the inference
# server's client tests (tests/support/src/openai_python.rs, in
# $BACKHAUL_CACHE/venv-openai, created here when missing) and the Node
# package pinned in worker/package.json. About a second when both are there.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo_root"

version=$(sed -n 's/^pub const OPENAI_VERSION: &str = "\(.*\)";$/\1/p' tests/support/src/openai_python.rs)
[ -n "$version" ] || { echo "check-openai-fields: no OPENAI_VERSION in tests/support/src/openai_python.rs" >&2; exit 1; }
python=${BACKHAUL_OPENAI_PYTHON:-$BACKHAUL_CACHE/venv-openai/bin/python}
if ! "$python" -c 'import openai, sys; sys.exit(openai.__version__ != sys.argv[1])' "$version" 2>/dev/null; then
  [ -z "${BACKHAUL_OPENAI_PYTHON:-}" ] || { echo "check-openai-fields: $python has no openai==$version" >&2; exit 1; }
  echo "check-openai-fields: installing openai==$version (PyPI) into $BACKHAUL_CACHE/venv-openai" >&2
  python3 -m venv "$BACKHAUL_CACHE/venv-openai"
  "$BACKHAUL_CACHE/venv-openai/bin/pip" install --quiet --disable-pip-version-check "openai==$version"
fi

fields=$(mktemp)
trap 'rm -f "$fields"' EXIT
# Both sides report before the check fails.
status=0
"$python" scripts/check-openai-fields.py --json-out "$fields" || status=1
source scripts/node-env.sh
node worker/scripts/check-openai-fields.mjs --python "$fields" || status=1
exit $status
