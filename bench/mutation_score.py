"""The mutation score per module from mutmut's results (`mutants/**/*.py.meta`), and the
mutants that survived: `python bench/mutation_score.py [mutants]` (bench/mutation.sh runs it).

Every mutant counts: killed / (killed + survived + no tests). A mutant no selected unit test
reaches ("no tests") is not killed, whatever the end-to-end tests do to it. A timeout counts as
killed (the mutant hung a test), as mutmut itself counts it. Survivors judged equivalent (the
mutated code behaves the same; bench/mutation_equivalent.txt gives each one's reason) are
counted apart: "killed or explained" = (killed + equivalent) / all. Mutants not run yet are left
out of both and shown."""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

KILLED = {1, 3, 36, 24, -24, 152, 255, -11, -9}
SURVIVED = {0}
NO_TESTS = {5, 33}
EQUIVALENT_FILE = Path(__file__).with_name("mutation_equivalent.txt")


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


def equivalent_mutants(path: Path = EQUIVALENT_FILE) -> dict:
    """{mutant name: reason} from lines `name  # reason` (blank lines and # lines skipped)."""
    if not path.exists():
        return {}
    found = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, reason = line.partition("#")
            found[name.strip()] = reason.strip()
    return found


def scores(root: Path, equivalent: dict = None) -> tuple[dict, dict]:
    """({module: Counter of outcomes}, {module: [names not killed and not explained]})."""
    equivalent = equivalent_mutants() if equivalent is None else equivalent
    counts, left = {}, {}
    for meta in sorted(root.rglob("*.py.meta")):
        module = str(meta.relative_to(root))[: -len(".meta")]
        by_key = json.loads(meta.read_text()).get("exit_code_by_key", {})
        outcome = {k: classify(code) for k, code in by_key.items()}
        for k, o in outcome.items():
            if o in ("survived", "no tests") and k in equivalent:
                outcome[k] = "equivalent"
        counts[module] = Counter(outcome.values())
        left[module] = sorted(k for k, o in outcome.items() if o in ("survived", "no tests", "other"))
    return counts, left


def main(argv=None) -> int:
    root = Path((argv or sys.argv[1:] or ["mutants"])[0])
    counts, left = scores(root)
    if not counts:
        print(f"no mutmut results under {root}/")
        return 1
    print("| module | mutants | killed | survived | no tests | equivalent | not run | killed | killed or explained |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for module, c in counts.items():
        judged = sum(c.values()) - c["not run"]
        share = (lambda n: f"{n / judged:.1%}") if judged else (lambda n: "—")
        print(f"| {module} | {sum(c.values())} | {c['killed']} | {c['survived']} | {c['no tests']} | "
              f"{c['equivalent']} | {c['not run']} | {share(c['killed'])} | "
              f"{share(c['killed'] + c['equivalent'])} |")
    for module, names in left.items():
        if names:
            print(f"\nleft in {module} ({len(names)}: survived or reached by no unit test, not explained):")
            for name in names:
                print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
