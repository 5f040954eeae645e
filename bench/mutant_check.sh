#!/usr/bin/env bash
# Whether given tests kill given mutants, without a whole mutmut run: each mutant of
# ./mutants (made by bench/mutation.sh) is switched on the way mutmut switches it (the
# MUTANT_UNDER_TEST variable its trampolines read) and the tests run against it.
#
#   bash bench/mutant_check.sh tests/test_results.py suite.results.x_redact__mutmut_6 [...]
#   bash bench/mutant_check.sh "tests/test_results.py::test_x" $(mutmut results | ...)
#
# Prints "killed" or "SURVIVED" per mutant. The tests are copied into mutants/tests first, and
# run from mutants/ so that the mutated copy of the suite is the one imported.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$PWD/.venv/bin/python}
tests=$1; shift
for t in $tests; do cp "${t%%::*}" "mutants/${t%%::*}"; done  # the file of each test named
cd mutants
# the tests must pass on the unmutated code, or every mutant would look killed
MUTANT_UNDER_TEST=none DS_ACCELERATOR=cpu "$PY" -m pytest -q -x -p no:cacheprovider $tests > /dev/null 2>&1 \
  || { echo "the tests fail without a mutant: $tests" >&2; exit 1; }
for mutant in "$@"; do
  if MUTANT_UNDER_TEST=$mutant DS_ACCELERATOR=cpu "$PY" -m pytest -q -x -p no:cacheprovider $tests > /dev/null 2>&1; then
    echo "SURVIVED $mutant"
  else
    echo "killed   $mutant"
  fi
done
