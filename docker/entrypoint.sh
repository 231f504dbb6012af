#!/usr/bin/env bash
# Sources CANN's environment when present, then runs qwen3-serve with the container's arguments.
set -euo pipefail
for f in /usr/local/Ascend/ascend-toolkit/set_env.sh /usr/local/Ascend/nnal/atb/set_env.sh; do
    if [ -f "$f" ]; then
        # shellcheck disable=SC1090
        source "$f" || true
    fi
done
exec /usr/local/bin/qwen3-serve "$@"
