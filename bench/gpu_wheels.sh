#!/usr/bin/env bash
# Builds the wheels an offline GPU box (Python 3.12, x86-64 manylinux, torch/numpy/pandas/... already
# installed, no network) lacks to run `python -m suite.sweep`: every runtime dependency of the suite
# (pyproject.toml's [project].dependencies and what they need in turn) that is not in BOX below:
# DeepSpeed, Hydra, submitit, pydantic, fsspec, Apache Otava, with their deps.
#   bash bench/gpu_wheels.sh [DEST]      (DEST defaults to .whl in the repository root; reruns skip
#                                         wheels already there; CHECK_ONLY=1 only runs the final check)
# bench/gpu_check.sh then uses the folder (WHEELS=DEST) with
#   python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site DEST/*.whl
# and PYTHONPATH=/tmp/site:<repository> (the device tool: name .whl in `carry`).
# A new dependency goes into BINARY or SDIST (with the deps its METADATA's Requires-Dist adds:
# `pip download --no-deps NAME==VERSION` and read it), or into BOX if the box has it;
# tests/test_gpu_scripts.py checks that every dependency, direct and indirect, is in one of them.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$ROOT/.whl}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
PY=${PYTHON:-python3}
LIMIT_MIB=${LIMIT_MIB:-60}

# The box's interpreter and platform: pip only accepts wheels that install there.
TARGET=(--python-version 3.12 --implementation cp --abi cp312 --only-binary=:all:
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64)
# The versions .venv resolved (make install). Published as wheels: downloaded.
BINARY=(
  hydra-core==1.3.8 omegaconf==2.3.1 submitit==1.5.4 hydra-submitit-launcher==1.2.0
  hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  # The box has typing-extensions, but pydantic(-core) need >=4.16.0, newer than torch asks for;
  # a newer typing_extensions on PYTHONPATH is harmless to everything else (it only adds names).
  typing-extensions==4.16.0
  # data.path as a URL (suite/workload/tokens.py imports it on every training run)
  fsspec==2026.9.0
  # Apache Otava (the report's change points, imported only with a nightly history) and what its
  # Requires-Dist brings that the box lacks: its importers' clients (BigQuery, PostgreSQL, Slack).
  apache-otava==0.8.0 configargparse==1.10.2 dateparser==1.5.0 pystache==0.6.8 validators==0.36.0
  ruamel.yaml==0.18.16 ruamel.yaml.clib==0.2.15 regex==2026.12.2 tzlocal==5.4.5 pytz==2026.6
  pg8000==1.31.6 scramp==1.5.0 asn1crypto==1.5.1 slack-sdk==3.48.0
  requests==2.34.2 urllib3==2.8.0 idna==3.21 certifi==2026.10.19.post1 charset-normalizer==3.5.3
  google-cloud-bigquery==3.47.0 google-cloud-core==2.8.0 google-resumable-media==2.11.0
  google-api-core==2.44.0 google-auth==2.63.1 google-crc32c==1.9.0 googleapis-common-protos==1.76.0
  grpcio==1.85.4 grpcio-status==1.85.3 protobuf==7.36.2 proto-plus==1.29.0 opentelemetry-api==1.45.3
  pyasn1==0.6.5 pyasn1-modules==0.4.2 cryptography==51.0.1 cffi==2.1.1 pycparser==3.12
)
# Published only as sdists: built here into pure-Python wheels (DeepSpeed without compiled ops:
# they are compiled on first use, on the box, only if asked for).
SDIST=(deepspeed==0.19.8 antlr4-python3-runtime==4.9.3)
# What the box already has: the final check stands these in with empty stub wheels (version
# 9999 = "whatever is there", or, where a fetched wheel pins it, the pinned version: the box's own
# is used whatever it is, installed with --no-deps; torch's is known). Not listed here and not in
# DEST = missing. python-dateutil and six come with pandas.
BOX=(torch==2.11.0 numpy pandas pyarrow matplotlib pyyaml cloudpickle tabulate ninja psutil py-cpuinfo
     packaging tqdm einops msgpack nvidia-ml-py typing-extensions filelock jinja2 rich scipy pytest
     python-dateutil six)

norm() { echo "$1" | tr 'A-Z' 'a-z' | sed -E 's/[-_.]+/_/g'; }
# The wheel in DEST for a package name (normalized), if any; one line per version.
wheels_of() { local n; n=$(norm "$1"); for f in "$DEST"/*.whl; do [ -e "$f" ] || continue
  local b=${f##*/}; [ "$(norm "${b%%-*}")" = "$n" ] && echo "$f"; done; return 0; }

# Keep exactly one version per package: anything else of that name is an older run's leftover.
want_missing() {  # prints the specs of $@ that DEST lacks
  local spec name ver f
  for spec in "$@"; do
    name=${spec%%==*} ver=${spec#*==}
    local have=0
    while read -r f; do
      [ -n "$f" ] || continue
      local b=${f##*/}; b=${b#*-}
      if [ "${b%%-*}" = "$ver" ]; then have=1; else echo "removing stale ${f##*/}" >&2; rm -f "$f"; fi
    done < <(wheels_of "$name")
    [ $have = 1 ] || echo "$spec"
  done
}

if [ "${CHECK_ONLY:-0}" != 1 ]; then
  mapfile -t get < <(want_missing "${BINARY[@]}")
  mapfile -t build < <(want_missing "${SDIST[@]}")
  tmp=$(mktemp -d /tmp/gpu_wheels.XXXXXX)
  trap 'rm -rf "$tmp"' EXIT
  if [ ${#get[@]} -gt 0 ]; then
    echo "downloading: ${get[*]}"
    "$PY" -m pip download -q --no-deps "${TARGET[@]}" -d "$tmp/dl" "${get[@]}"
  fi
  if [ ${#build[@]} -gt 0 ]; then
    echo "building: ${build[*]}"
    # --no-cache-dir: a cached wheel may have been built with other DS_BUILD_* settings.
    DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-cache-dir -w "$tmp/built" "${build[@]}"
    for f in "$tmp"/built/*.whl; do
      case ${f##*/} in
        *-py3-none-any.whl|*-py2.py3-none-any.whl) ;;
        *) echo "ERROR: ${f##*/} is not a pure-Python wheel" >&2; exit 1 ;;
      esac
      if unzip -l "$f" | grep -qE '\.(so|pyd)$'; then echo "ERROR: ${f##*/} holds compiled code" >&2; exit 1; fi
    done
  fi
  for f in "$tmp"/dl/*.whl "$tmp"/built/*.whl; do
    [ -e "$f" ] || continue
    mv "$f" "$DEST/"; printf '  fetched %-80s %8s\n' "${f##*/}" "$(( $(stat -c %s "$DEST/${f##*/}") / 1024 )) KiB"
  done
  [ ${#get[@]} -gt 0 ] || [ ${#build[@]} -gt 0 ] || echo "all wheels already in $DEST"
fi

# ---- check: the set is complete, one version each, installable on cp312 manylinux x86-64 ----
echo "checking $DEST against the suite's requirements (pyproject.toml) for Python 3.12"
chk=$(mktemp -d /tmp/gpu_wheels_check.XXXXXX)
trap 'rm -rf "$chk" ${tmp:+"$tmp"}' EXIT
"$PY" - "$ROOT" "$DEST" "$chk" "$LIMIT_MIB" "${BINARY[@]}" "${SDIST[@]}" -- "${BOX[@]}" <<'EOF'
import os, re, sys, zipfile
root, dest, chk, limit = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
args = sys.argv[5:]; cut = args.index("--")
wanted, box = args[:cut], args[cut + 1:]
norm = lambda n: re.sub(r"[-_.]+", "_", n).lower()
wanted = {norm(s.split("==")[0]): s.split("==")[1] for s in wanted}
have, bad = {}, []
for f in sorted(os.listdir(dest)):
    if not f.endswith(".whl"):
        continue
    name, ver = f.split("-")[:2]
    if norm(name) in have:
        bad.append(f"two versions of {name}: {have[norm(name)]} and {f}")
    have[norm(name)] = f
    if norm(name) not in wanted:
        bad.append(f"unexpected wheel {f} (not in this script's lists; remove it)")
    elif wanted[norm(name)] != ver:
        bad.append(f"{f}: expected version {wanted[norm(name)]}")
for n in wanted.keys() - have.keys():
    bad.append(f"missing wheel for {n}")
total = sum(os.path.getsize(os.path.join(dest, f)) for f in have.values()) / 2**20
if total > limit:
    bad.append(f"total {total:.1f} MiB is over {limit} MiB")
if bad:
    sys.exit("ERROR: " + "\n       ".join(bad))
# What DEST's wheels ask of the box's packages (Requires-Dist, markers for CPython 3.12 on Linux).
try:
    from packaging.requirements import Requirement
    from packaging.version import Version
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import Version
import tomllib
with open(os.path.join(root, "pyproject.toml"), "rb") as fh:
    reqs = tomllib.load(fh)["project"]["dependencies"]
target_env = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
              "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
asks = {}  # box package -> [(who asks, specifier)]
def note(who, line):
    r = Requirement(line)
    if r.marker is None or r.marker.evaluate(target_env):
        asks.setdefault(norm(r.name), []).append((who, r.specifier))
for line in reqs:
    note("pyproject.toml", line)
for f in have.values():
    with zipfile.ZipFile(os.path.join(dest, f)) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:"):
                note(f.split("-")[0], line.split(":", 1)[1].strip())
# Empty stub wheels for what the box provides (and DEST does not).
os.makedirs(os.path.join(chk, "stubs"))
for spec in box:
    name, _, ver = spec.partition("==")
    if norm(name) in have:
        continue
    if not ver:  # "whatever is there": 9999, or the version a pin asks for
        specs = [s for _, s in asks.get(norm(name), []) if str(s)]
        candidates = {"9999"} | {c.version.rstrip(".*") for s in specs for c in s}
        fitting = [c for c in candidates if all(s.contains(c, prereleases=True) for s in specs)]
        if not fitting:
            sys.exit(f"ERROR: no version of the box's {name} meets {'; '.join(map(str, specs))}")
        ver = str(max(fitting, key=Version))
        if ver != "9999":
            who = ", ".join(sorted({w for w, s in asks[norm(name)] if str(s)}))
            print(f"  the box's {name} stood in at {ver}, as {who} ask "
                  f"({'; '.join(sorted({str(s) for s in specs}))}); on the box its own {name} is used "
                  "whatever its version (gpu_check.sh's preflight prints numpy's, scipy's, dateutil's)")
    dist = f"{norm(name)}-{ver}.dist-info"
    with zipfile.ZipFile(os.path.join(chk, "stubs", f"{norm(name)}-{ver}-py3-none-any.whl"), "w") as z:
        z.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: stub\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")
with open(os.path.join(chk, "requirements.txt"), "w") as fh:
    fh.write("\n".join(reqs) + "\n")
EOF
# --isolated: no pip config or PIP_* variables (this machine's find-links would hide a gap).
"$PY" -m pip install --isolated --disable-pip-version-check -q --dry-run --ignore-installed \
  --no-index --find-links "$DEST" --find-links "$chk/stubs" "${TARGET[@]}" --target "$chk/target" \
  --report "$chk/report.json" -r "$chk/requirements.txt"
"$PY" - "$DEST" "$chk/report.json" <<'EOF'
import json, os, sys
dest, report = sys.argv[1], json.load(open(sys.argv[2]))
used = {os.path.basename(i["download_info"]["url"]) for i in report["install"]}
ours = sorted(f for f in os.listdir(dest) if f.endswith(".whl"))
unused = [f for f in ours if f not in used]
stubs = sorted(i["metadata"]["name"] for i in report["install"] if i["metadata"]["name"] and
               os.path.basename(i["download_info"]["url"]) not in ours)
print(f"resolved for cp312: {len(ours) - len(unused)} wheels from DEST; taken from the box: {', '.join(stubs)}")
if unused:
    sys.exit(f"ERROR: wheels no requirement needs: {', '.join(unused)}")
total = 0
for f in ours:
    size = os.path.getsize(os.path.join(dest, f)); total += size
    print(f"  {f:<82} {size / 2**10:8.0f} KiB")
print(f"OK: {len(ours)} wheels, {total / 2**20:.1f} MiB in {dest}")
EOF
