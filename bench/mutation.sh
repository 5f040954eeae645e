#!/usr/bin/env bash
# Mutation testing of the suite's pure modules with mutmut: each mutant (an operator flipped, a
# constant changed, an argument dropped, ...) runs the unit tests that reach the mutated
# function; a mutant that no test fails "survived". The modules and the tests are in
# pyproject.toml's [tool.mutmut]. Prints the score per module and the survivors
# (bench/mutation_score.py), which bench/RESULTS.md keeps.
#
#   bash bench/mutation.sh                        # every module (about 15 minutes on 2 cores)
#   bash bench/mutation.sh "suite.metrics*"       # mutmut's own selection of mutant names
#
# Not in CI: it runs the unit tests once per mutant. mutmut works in ./mutants (a mutated copy
# of the sources); results are kept there, so a second run only tests what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -m pip install -q "mutmut==3.8.1"
mkdir -p mutants
# The mutated copy must win over the editable install of the unmutated sources; the folder
# exists before Python starts, so its import finder sees the files mutmut writes into it.
PYTHONPATH="$PWD/mutants${PYTHONPATH:+:$PYTHONPATH}" DS_ACCELERATOR=cpu "$PY" -m mutmut run "$@" || true
"$PY" bench/mutation_score.py mutants
