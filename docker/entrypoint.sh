#!/usr/bin/env bash
# The images' entrypoint: sets up CANN's environment when CANN is there, then runs qwen3-serve
# with the container's arguments.
#
# - CANN: the CANN base images keep their library paths in
#   /usr/local/Ascend/ascend-toolkit/set_env.sh (LD_LIBRARY_PATH, ASCEND_TOOLKIT_HOME,
#   ASCEND_OPP_PATH, ...). qwen3-serve dlopens libascendcl.so & co. at run time, and their own
#   dependencies (libascend_hal.so from the host's driver mount, ...) resolve through
#   LD_LIBRARY_PATH, so it is sourced here as the base images' own entrypoint does. The CPU image
#   has no CANN: nothing is sourced.
# - Defaults: a server in a container must listen on all interfaces to be reachable, but
#   qwen3-serve listens on 127.0.0.1 unless told. For the server (no subcommand, or `serve`),
#   the words of QWEN3_SERVE_DEFAULT_ARGS (the images set `--host 0.0.0.0`, the CPU image also
#   `--device cpu`) go before the container's arguments; later flags win, so any flag given to
#   `docker run` overrides them. They also override a --config preset's value for the same key.
#   Set QWEN3_SERVE_DEFAULT_ARGS= (empty) to pass the arguments through untouched.
set -eo pipefail

toolkit_env=/usr/local/Ascend/ascend-toolkit/set_env.sh
if [ -f "$toolkit_env" ]; then
    # set_env.sh reads variables that may be unset; do not let one stop the container.
    # shellcheck disable=SC1090
    source "$toolkit_env" || echo "qwen3-serve entrypoint: sourcing $toolkit_env failed; continuing" >&2
fi

read -r -a defaults <<<"${QWEN3_SERVE_DEFAULT_ARGS-}"
case "${1-}" in
    # Subcommands other than the server take other flags: pass them through as they are.
    generate | bench | help | doctor)
        exec qwen3-serve "$@"
        ;;
    serve)
        shift
        exec qwen3-serve serve "${defaults[@]}" "$@"
        ;;
    *)
        exec qwen3-serve "${defaults[@]}" "$@"
        ;;
esac
