"""Every command README.md, docs/ and the configs' comments show still works: each `python -m suite.sweep` line runs as a
dry run (composed, planned and printed, nothing started), each other `python -m suite.<tool>`
line has every option it shows in the tool's --help, and the cheap ones run for real. A doc
example that no longer works fails here.

Placeholders are filled as a user would fill them: `cluster=my_site` is the copy of
conf/cluster/slurm.yaml that README tells users to make (put on Hydra's search path here, not
written into conf/), `<N>` is 2. The dry runs see no `sbatch` on PATH: the docs' node counts are
a real site's (16 nodes), which this machine's test cluster cannot meet, and the check is that
the configs and plans are right, not that this machine is the site."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "results" / "README.md"]
TOOL = re.compile(r"(?:\.venv/bin/)?python3? -m (suite(?:\.[a-z_]+)+)")
PLACEHOLDERS = {"<N>": "2", "[overrides]": ""}
# Commands the docs show being refused, with the words the refusal must say (docs/memory.md,
# docs/reliability.md: the 13B on a 24 GiB machine without a GPU)
REFUSED = {"python -m suite.sweep -m model=gpt_13b": "Would fit, by the same model: model="}


def _blocks(text: str) -> list[str]:
    """The fenced code blocks of a Markdown page, each as its text (fences read line by line: a
    closing fence is never taken for an opening one)."""
    blocks, current = [], None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def _fenced(text: str) -> list[str]:
    """Lines of fenced blocks, a backslash continuation joined to its line, comments dropped."""
    lines, out = [], []
    for block in _blocks(text):
        lines += block.replace("\\\n", " ").splitlines()
    for line in lines:
        line = re.sub(r"\s+#.*$", "", line).strip()  # a trailing comment (no '#' inside our args)
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _inline(text: str) -> list[str]:
    """`python -m suite...` in backticks in the prose (fenced blocks left out); a span may break
    across lines."""
    prose = text
    for block in _blocks(text):
        prose = prose.replace(block, "")
    return [" ".join(span.split()) for span in re.findall(r"`([^`\n]*(?:\n[^`\n]*)?python3? -m suite[^`]*)`", prose)]


def doc_commands() -> list[tuple[str, str]]:
    """(page, command) for every suite command a page shows, the command from `python -m` on."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for line in _fenced(text) + _inline(text):
            match = TOOL.search(line)
            if match:
                command = " ".join(line[match.start():].split())
                found.append((page.relative_to(REPO).as_posix(), re.sub(r"^\.venv/bin/", "", command)))
    for config in sorted((REPO / "conf").rglob("*.yaml")):  # commands in the configs' comments
        for line in config.read_text().splitlines():
            match = TOOL.search(line)  # a comment line that is a command, not prose naming one
            if match and re.fullmatch(r"#\s+", line[:match.start()].lstrip()):
                found.append((config.relative_to(REPO).as_posix(), " ".join(line[match.start():].split())))
    first = {}
    for page, command in found:  # a command several pages show is checked once
        first.setdefault(command, page)
    return [(page, command) for command, page in first.items()]


def _filled(command: str) -> list[str]:
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    return shlex.split(command)


def test_the_docs_show_the_commands_this_check_reads():
    commands = doc_commands()
    tools = {TOOL.search(c).group(1) for _, c in commands}
    # every tool the README names is found in some page (the check would be empty otherwise)
    assert {"suite.sweep", "suite.report", "suite.compare", "suite.status", "suite.rerun"} <= tools
    assert sum(TOOL.search(c).group(1) == "suite.sweep" for _, c in commands) >= 15
    # a fenced block's continuation lines are joined: the README's cluster example is one command
    assert any(c.startswith("python -m suite.sweep -m cluster=my_site model=gpt_1_3b") and "cluster.nodes=1,2" in c
               for _, c in commands)
    assert 6 in stated_run_counts().values()  # README's cluster example says how many runs it starts


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """What README's first cluster step makes: conf/cluster/my_site.yaml, a copy of slurm.yaml
    (here in a folder of its own on Hydra's search path), and a PATH without a scheduler."""
    root = tmp_path_factory.mktemp("site")
    (root / "conf" / "cluster").mkdir(parents=True)
    text = (REPO / "conf" / "cluster" / "slurm.yaml").read_text().replace("name: slurm\n", "name: my_site\n")
    (root / "conf" / "cluster" / "my_site.yaml").write_text(text)
    tools = root / "bin"
    tools.mkdir()
    # git: the environment capture asks it for the revision; sinfo: submit.each_node lists the
    # nodes that are up (the local test cluster's), which the preflight example needs
    for name in ("git", "sinfo"):
        if shutil.which(name):
            (tools / name).symlink_to(shutil.which(name))
    return {"searchpath": f"hydra.searchpath=[file://{root / 'conf'}]",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), str(tools)])}


def _sweep_dry_run(page: str, command: str, site: dict, out: Path) -> tuple[str, str, subprocess.CompletedProcess]:
    args = _filled(command)[3:]  # after "python -m suite.sweep"
    args = [a for a in args if not a.startswith("hydra.sweep.dir=")]
    env = {**os.environ, "PATH": site["PATH"], "SUITE_RESULTS_DIR": str(out), "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "suite.sweep", *args, "submit.dry_run=true",
                           site["searchpath"]], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    print(f"{time.monotonic() - started:5.1f} s  {page}: {command}")
    return page, command, done


def stated_run_counts() -> dict:
    """Commands whose comment in a fenced block says how many runs they start ('# 6 runs')."""
    counts = {}
    for page in PAGES:
        for block in _blocks(page.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                match, stated = TOOL.search(line), re.search(r"#\s*(\d+) runs", line)
                if match and stated:
                    command = " ".join(re.sub(r"\s+#.*$", "", line)[match.start():].split())
                    counts[re.sub(r"^\.venv/bin/", "", command)] = int(stated.group(1))
    return counts


def test_every_sweep_command_in_the_docs_is_a_clean_dry_run(site, tmp_path):
    sweeps = [(p, c) for p, c in doc_commands() if TOOL.search(c).group(1) == "suite.sweep"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda pc: _sweep_dry_run(*pc, site, tmp_path / str(abs(hash(pc)))), sweeps))
    failed = []
    for page, command, done in outcomes:
        text = done.stdout + done.stderr
        if command in REFUSED:  # shown as a refusal: it must still be one, with its words
            ok = done.returncode != 0 and REFUSED[command] in text and "Traceback" not in text
        else:
            ok = done.returncode == 0 and "Traceback" not in text and "submit.dry_run" in text
        stated = stated_run_counts().get(command)
        if ok and stated is not None and f"Planned {stated} points" not in text:
            ok = False
            text = f"the page says {stated} runs; " + (re.findall(r"Planned \d+ points", text) or ["no plan"])[0]
        if not ok:
            failed.append(f"{page}: {command}\n    -> rc {done.returncode}: {text.strip()[-600:]}")
    assert not failed, "\n".join(failed)
    print(f"{len(sweeps)} sweep commands of the docs planned as dry runs")


def _help(tool: str) -> str:
    done = subprocess.run([sys.executable, "-m", tool, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, (tool, done.stderr[-1000:])
    return done.stdout


def test_every_option_the_docs_give_a_tool_is_one_it_has():
    others = [(p, c) for p, c in doc_commands() if TOOL.search(c).group(1) != "suite.sweep"]
    helps, missing = {}, []
    for page, command in others:
        tool = TOOL.search(command).group(1)
        if tool not in helps:
            helps[tool] = _help(tool)
        for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", command):
            if option not in helps[tool]:
                missing.append(f"{page}: {command}: {option} is not an option of {tool}")
    assert not missing, "\n".join(missing)
    assert {"suite.report", "suite.compare", "suite.status"} <= set(helps)


def test_the_cheap_commands_of_the_docs_run_for_real(tmp_path, site):
    # the token file docs/configuration.md says how to write, written with the flags it shows,
    # then planned as a sweep's data
    [writer] = [c for _, c in doc_commands() if TOOL.search(c).group(1) == "suite.workload.data"]
    filled = writer.replace("FILE", str(tmp_path / "tokens.bin")).replace(" N ", " 5000 ").replace(" V", " 512")
    done = subprocess.run([sys.executable, *shlex.split(filled)[1:]], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and (tmp_path / "tokens.bin").stat().st_size == 5000 * 2, done.stderr[-1000:]
    _, _, done = _sweep_dry_run("docs/configuration.md", f"python -m suite.sweep -m data=tokens "
                                f"data.path={tmp_path / 'tokens.bin'}", site, tmp_path / "sweeps")
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
