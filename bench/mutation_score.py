"""The mutation score per module from mutmut's results (`mutants/**/*.py.meta`), and the
mutants that survived: `python bench/mutation_score.py [mutants]` (bench/mutation.sh runs it).

Score = killed / (killed + survived): mutants no selected test reaches ("no tests") and those
not run yet are counted apart, not as kills. A timeout counts as killed (the mutant hung a
test), as mutmut itself counts it."""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

KILLED = {1, 3, 36, 24, -24, 152, 255, -11, -9}
SURVIVED = {0}
NO_TESTS = {5, 33}


def classify(exit_code) -> str:
    if exit_code is None:
        return "not run"
    if exit_code in KILLED:
        return "killed"
    if exit_code in SURVIVED:
        return "survived"
    if exit_code in NO_TESTS:
        return "no tests"
    return "other"


def scores(root: Path) -> tuple[dict, dict]:
    """({module: Counter of outcomes}, {module: [surviving mutant names]})."""
    counts, survivors = {}, {}
    for meta in sorted(root.rglob("*.py.meta")):
        module = str(meta.relative_to(root))[: -len(".meta")]
        data = json.loads(meta.read_text())
        by_key = data.get("exit_code_by_key", {})
        counts[module] = Counter(classify(code) for code in by_key.values())
        survivors[module] = sorted(k for k, code in by_key.items() if classify(code) == "survived")
    return counts, survivors


def main(argv=None) -> int:
    root = Path((argv or sys.argv[1:] or ["mutants"])[0])
    counts, survivors = scores(root)
    if not counts:
        print(f"no mutmut results under {root}/")
        return 1
    print("| module | mutants | killed | survived | no tests | not run | score |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for module, c in counts.items():
        judged = c["killed"] + c["survived"]
        score = f"{c['killed'] / judged:.1%}" if judged else "—"
        print(f"| {module} | {sum(c.values())} | {c['killed']} | {c['survived']} | {c['no tests']} | "
              f"{c['not run']} | {score} |")
    for module, names in survivors.items():
        if names:
            print(f"\nsurvived in {module} ({len(names)}):")
            for name in names:
                print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
