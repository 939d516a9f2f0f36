#!/usr/bin/env bash
# Install everything the tests need (system packages, dockerd, images, .venv) and run the whole suite.
# In CI (CI=true) a test whose capability (docker, bubblewrap, ...) is missing fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests bench
.venv/bin/mypy  # strict, on src/corral (pyproject [tool.mypy])
set +e
.venv/bin/pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"
