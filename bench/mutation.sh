#!/usr/bin/env bash
# Mutation testing of the suite's pure modules with mutmut: each mutant (an operator flipped, a
# constant changed, a call's argument dropped, ...) runs the unit tests that reach the mutated
# function; a mutant no test fails "survived". Prints the score per module and lists the
# survivors (bench/mutation_score.py).
#
#   bash bench/mutation.sh            # every module below (an hour or more on 2 cores)
#   bash bench/mutation.sh suite/metrics.py suite/schedulers/base.py   # some of them
#
# Not in CI: it runs the unit tests once per mutant. mutmut works in ./mutants (a mutated copy
# of the sources; results are kept there, so a second run only tests what changed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODULES=("$@")
if [ ${#MODULES[@]} -eq 0 ]; then
  MODULES=(suite/plan.py suite/metrics.py suite/report/analysis.py suite/results.py suite/schedulers/base.py)
fi
"$PY" -m pip install -q "mutmut==3.8.1"

# The unit tests: no sweep, no Slurm, no subprocess (the mutant lives in this process).
TESTS=(tests/test_plan.py tests/test_metrics.py tests/test_memory.py tests/test_analysis.py
       tests/test_intervals.py tests/test_compare.py tests/test_config.py tests/test_results.py
       tests/test_status.py tests/test_changepoints.py tests/test_metric_registry.py
       "tests/test_schedulers.py::test_groups_are_ordered_shortest_first_within_and_across"
       "tests/test_schedulers.py::test_sacct_lines_including_never_started_array_tasks"
       "tests/test_schedulers.py::test_slurm_states_map_to_statuses"
       "tests/test_faults.py::test_200_writers_finishing_at_once_leave_200_intact_records"
       "tests/test_faults.py::test_records_of_an_earlier_schema_are_still_reported"
       tests/test_report.py tests/test_gpu_path.py tests/test_host_memory.py tests/test_autotune.py)
DESELECT=(--deselect tests/test_changepoints.py::test_the_error_rate_benchmark_runs_in_small_mode
          --deselect tests/test_gpu_path.py::test_a_micro_benchmark_runs_once_whatever_the_training_axes
          --deselect tests/test_gpu_path.py::test_prebuild_loads_the_op_runs_load_where_runs_look_for_it
          --deselect tests/test_host_memory.py::test_a_rank_limited_to_its_share_gets_a_memory_error_not_the_oom_killer
          --deselect tests/test_host_memory.py::test_the_13b_sweep_is_refused_before_any_process_starts
          --deselect tests/test_host_memory.py::test_a_run_forced_past_the_check_ends_as_oom_and_the_machine_is_untouched
          --deselect tests/test_autotune.py::test_autotune_finds_the_grids_best_for_fewer_run_seconds_and_skips_what_cannot_fit
          --deselect tests/test_autotune.py::test_a_sweep_on_the_command_line_is_refused_with_the_quoted_form
          --deselect tests/test_report.py::test_a_sweep_copied_off_the_cluster_reports_and_says_reconciliation_was_skipped)

toml_list() { local out="" x; for x in "$@"; do out+="\"$x\", "; done; echo "[${out%, }]"; }
mkdir -p .mutmut
cat > .mutmut/setup.toml <<EOF
[tool.mutmut]
source_paths = ["suite/"]
only_mutate = $(toml_list "${MODULES[@]}")
pytest_add_cli_args_test_selection = $(toml_list "${TESTS[@]}" "${DESELECT[@]}")
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]
also_copy = ["hydra_plugins/", "conf/", "tests/", "bench/", "slurm/", "pyproject.toml"]
EOF
echo "mutmut config: .mutmut/setup.toml"
