"""A wheelhouse for a GPU node without internet: every wheel the project needs that the node
does not already have, for one Python version and manylinux platform, small enough to travel
with the code.

    python tools/wheelhouse.py build --out wheels [--python-version 3.12]
        [--platform manylinux2014_x86_64] [--preinstalled torch numpy ...] [--max-mib 60]
    python tools/wheelhouse.py check-record WHEEL...

`build`:
  1. resolves (pip's resolver, `install --dry-run --report`, no download) the project's
     dependencies, pytest (for `pytest -m gpu`) and the node's preinstalled packages together
     for the target Python and platform, binary wheels only;
  2. drops the dependency closure of the preinstalled packages (`closure`: requires_dist
     markers evaluated for the target, extras followed) and the packages of LEFT_OUT;
  3. downloads the rest (`pip download --no-deps`, pinned), plus the build requirements of the
     project itself (setuptools, wheel) so that `pip install --no-index -e .` works;
  4. repacks Ray's wheel without what training, Tune and `ray job submit` never import
     (`RAY_DROP`), with a RECORD recomputed for the files kept (`repack_wheel`);
  5. writes requirements.txt (what `make install-offline` installs) and manifest.json (target,
     preinstalled set, every wheel with its size), and fails when the folder exceeds --max-mib.

Only steps 1 and 3 use the network; the rest are pure functions tested offline
(tests/test_wheelhouse.py).
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent

PREINSTALLED = (
    "torch",
    "numpy",
    "pyarrow",
    "tensorboard",
    "pandas",
    "grpcio",
    "aiohttp",
    "protobuf",
    "msgpack",
)
"""What a GPU node is assumed to have already (the default of --preinstalled)."""

TEST_REQUIREMENTS = ("pytest>=8", "pytest-timeout>=2.3")
"""Beyond the project's dependencies: what `pytest -m gpu` needs."""

LEFT_OUT = {
    "matplotlib": "draws the plots of `launch.study` only (write the report elsewhere)",
    "virtualenv": "Ray's runtime_env `pip` / `uv` fields only, which the project never sets",
    "py-spy": "the dashboard's on-demand profiler only",
    "cryptography": "google-auth's signing (Ray's metrics exporter never signs)",
}
"""Packages (with the dependencies that only they bring) left out of the wheelhouse to keep it
under 60 MiB, with why a GPU node's training, tests, Tune and `ray job submit` do without them.
The pinned set is installed with --no-deps, so their absence does not stop the install."""

RAY_DROP = (
    "ray/jars/",  # the Java worker
    "ray/cpp/",  # the C++ API
    "ray/rllib/",
    "ray/serve/",
    "ray/llm/",
    "ray/dashboard/client/build/static/js/",  # the dashboard's web page (see RAY_KEEP)
    "ray/dashboard/client/build/static/css/",
    "ray/dashboard/client/build/static/media/",
    "ray/dashboard/client/build/speedscope-",
)
"""Path prefixes left out of Ray's wheel: neither training nor Tune nor `ray job submit` (the
dashboard's job module and the node's job agent, which are kept) imports them."""

RAY_KEEP = ("ray/dashboard/client/build/static/js/",)
"""Kept even under RAY_DROP, one smallest file each: the dashboard head refuses to start when
its build folder or `build/static` is missing (it serves them; the job API does not need
their content)."""


# -- the target environment and the closure ---------------------------------------------------


def target_environment(python_version: str, platform: str) -> dict[str, str]:
    """Marker variables of CPython `python_version` (e.g. "3.12") on a manylinux `platform`."""
    machine = re.sub(r"^(manylinux_\d+_\d+|manylinux\d*|musllinux_\d+_\d+)_", "", platform)
    return {
        "implementation_name": "cpython",
        "implementation_version": f"{python_version}.0",
        "os_name": "posix",
        "platform_machine": machine,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": f"{python_version}.0",
        "python_version": python_version,
        "sys_platform": "linux",
    }


def _applies(requirement: Requirement, env: Mapping[str, str], extras: Iterable[str]) -> bool:
    """Whether `requirement` holds on `env` for a package installed with `extras`."""
    if requirement.marker is None:
        return True
    return any(
        requirement.marker.evaluate({**env, "extra": extra}) for extra in ("", *sorted(extras))
    )


def closure(
    requires: Mapping[str, list[str]], roots: Iterable[str], env: Mapping[str, str]
) -> set[str]:
    """Canonical names reachable from `roots` (requirement strings, extras allowed).

    `requires` maps a canonical name to its requires_dist lines (only the packages of one
    resolution: a requirement on a package outside it is not followed).
    """
    seen_extras: dict[str, set[str]] = {}
    stack = [Requirement(root) for root in roots]
    while stack:
        req = stack.pop()
        name = canonicalize_name(req.name)
        if name not in requires:
            continue
        extras = {canonicalize_name(e) for e in req.extras}
        known = seen_extras.get(name)
        if known is not None and extras <= known:
            continue
        all_extras = extras | (known or set())
        seen_extras[name] = all_extras
        for line in requires[name]:
            dep = Requirement(line)
            if _applies(dep, env, all_extras):
                stack.append(dep)
    return set(seen_extras)


def requires_of(report: Mapping) -> dict[str, list[str]]:
    """canonical name -> requires_dist lines, from a pip installation report."""
    return {
        canonicalize_name(item["metadata"]["name"]): list(item["metadata"].get("requires_dist", []))
        for item in report["install"]
    }


def pins_of(report: Mapping) -> dict[str, str]:
    """canonical name -> version, from a pip installation report."""
    return {
        canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
        for item in report["install"]
    }


def wheelhouse_pins(
    report: Mapping,
    needed: Iterable[str],
    preinstalled: Iterable[str],
    env: Mapping[str, str],
    left_out: Iterable[str] = (),
) -> dict[str, str]:
    """name -> version of every package that `needed` pulls in and the preinstalled set and
    its own dependencies do not, within one resolution; without the `left_out` packages and
    what only they pull in."""
    requires = requires_of(report)
    have = closure(requires, preinstalled, env)
    want = closure(requires, needed, env)
    left_out = {canonicalize_name(name) for name in left_out}
    if left_out:
        # What stays reachable when the left-out packages are taken out of the graph.
        kept = {name: lines for name, lines in requires.items() if name not in left_out}
        want &= closure(kept, needed, env)
    pins = pins_of(report)
    return {name: pins[name] for name in sorted(want - have)}


# -- RECORD and repacking ---------------------------------------------------------------------


def record_hash(data: bytes) -> str:
    """A RECORD hash field: sha256, urlsafe base64 without padding (the wheel spec's form)."""
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _record_name(names: Iterable[str]) -> str:
    records = [n for n in names if re.fullmatch(r"[^/]+\.dist-info/RECORD", n)]
    if len(records) != 1:
        raise ValueError(f"a wheel has exactly one .dist-info/RECORD, found {records}")
    return records[0]


def repack_wheel(
    source: Path, target: Path, drop: Iterable[str], keep_one: Iterable[str] = ()
) -> dict[str, int]:
    """Copy wheel `source` to `target` without the files under the `drop` prefixes, with a
    RECORD recomputed for the files kept. Under each `keep_one` prefix the smallest file is
    kept. Returns {"kept": n, "dropped": n, "dropped_bytes": uncompressed bytes}."""
    drop, keep_one = tuple(drop), tuple(keep_one)
    with zipfile.ZipFile(source) as zin:
        infos = [i for i in zin.infolist() if not i.is_dir()]
        record = _record_name(i.filename for i in infos)
        spared = set()
        for prefix in keep_one:
            under = [i for i in infos if i.filename.startswith(prefix)]
            if under:
                spared.add(min(under, key=lambda i: (i.file_size, i.filename)).filename)
        kept, dropped_bytes, rows = [], 0, []
        for info in infos:
            name = info.filename
            if name == record:
                continue
            if name.startswith(drop) and name not in spared:
                dropped_bytes += info.file_size
                continue
            kept.append(info)
        tmp = target.with_name(target.name + ".part")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
            for info in kept:
                data = zin.read(info)
                zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
                rows.append((info.filename, record_hash(data), str(len(data))))
            rows.append((record, "", ""))
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerows(rows)
            zout.writestr(record, buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
        os.replace(tmp, target)
    return {
        "kept": len(kept),
        "dropped": len(infos) - 1 - len(kept),
        "dropped_bytes": dropped_bytes,
    }


def record_problems(wheel: Path) -> list[str]:
    """What is wrong with a wheel's RECORD: files missing from it or from the wheel, wrong
    hashes or sizes. Empty when RECORD matches the files exactly."""
    problems = []
    with zipfile.ZipFile(wheel) as z:
        names = [i.filename for i in z.infolist() if not i.is_dir()]
        record = _record_name(names)
        rows = list(csv.reader(io.StringIO(z.read(record).decode())))
        listed = {}
        for row in rows:
            if len(row) != 3:
                problems.append(f"RECORD row is not path,hash,size: {row}")
                continue
            listed[row[0]] = row
        for name in names:
            if name not in listed:
                problems.append(f"{name}: in the wheel, not in RECORD")
                continue
            if name == record:
                continue
            data = z.read(name)
            _, hashed, size = listed[name]
            if hashed != record_hash(data):
                problems.append(f"{name}: hash {hashed} in RECORD, {record_hash(data)} in wheel")
            if size != str(len(data)):
                problems.append(f"{name}: size {size} in RECORD, {len(data)} in wheel")
        problems += [f"{name}: in RECORD, not in the wheel" for name in set(listed) - set(names)]
    return problems


# -- the network steps ------------------------------------------------------------------------


def _target_flags(python_version: str, platform: str) -> list[str]:
    abi = "cp" + python_version.replace(".", "")
    return [
        "--only-binary=:all:",
        "--python-version", python_version,
        "--implementation", "cp",
        "--abi", abi,
        "--platform", platform,
    ]  # fmt: skip


def project_requirements(pyproject: Path = ROOT / "pyproject.toml") -> tuple[list[str], list[str]]:
    """(the project's dependencies, its build-system requirements) from pyproject.toml."""
    import tomllib

    data = tomllib.loads(pyproject.read_text())
    return list(data["project"]["dependencies"]), list(data["build-system"]["requires"])


def resolve(requirements: list[str], python_version: str, platform: str, workdir: Path) -> dict:
    """pip's resolution of `requirements` for the target, as its installation report."""
    report = workdir / "report.json"
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
        "--report", str(report), "--target", str(workdir / "unused"),
        *_target_flags(python_version, platform), *requirements,
    ]  # fmt: skip
    subprocess.run(command, check=True)
    return json.loads(report.read_text())


def download(pins: Mapping[str, str], out: Path, python_version: str, platform: str) -> None:
    """The pinned wheels into `out` (no dependencies: the pins are the whole set)."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(out),
        *_target_flags(python_version, platform),
        *(f"{name}=={version}" for name, version in pins.items()),
    ]  # fmt: skip
    subprocess.run(command, check=True)


def build(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dependencies, build_requires = project_requirements()
    needed = [*dependencies, *TEST_REQUIREMENTS]
    env = target_environment(args.python_version, args.platform)
    with tempfile.TemporaryDirectory() as work:
        print(f"resolving for CPython {args.python_version} on {args.platform} ...", flush=True)
        report = resolve(
            [*needed, *build_requires, *args.preinstalled],
            args.python_version,
            args.platform,
            Path(work),
        )
    runtime = wheelhouse_pins(report, needed, args.preinstalled, env, LEFT_OUT)
    build_pins = wheelhouse_pins(report, build_requires, (), env)
    pins = {**runtime, **build_pins}
    print(f"downloading {len(pins)} wheels ...", flush=True)
    for stale in out.glob("*.whl"):
        stale.unlink()
    download(pins, out, args.python_version, args.platform)
    for wheel in sorted(out.glob("ray-*.whl")):
        original = wheel.stat().st_size
        counts = repack_wheel(wheel, wheel, RAY_DROP, RAY_KEEP)
        problems = record_problems(wheel)
        if problems:
            print("\n".join(problems[:20]), file=sys.stderr)
            return 1
        print(
            f"repacked {wheel.name}: {original / 2**20:.1f} -> {wheel.stat().st_size / 2**20:.1f}"
            f" MiB ({counts['dropped']} files, {counts['dropped_bytes'] / 2**20:.0f} MiB "
            "uncompressed left out)"
        )
    wheels = sorted(out.glob("*.whl"))
    sizes = {w.name: w.stat().st_size for w in wheels}
    total = sum(sizes.values())
    (out / "requirements.txt").write_text(
        "".join(f"{name}=={version}\n" for name, version in runtime.items())
    )
    manifest = {
        "python_version": args.python_version,
        "platform": args.platform,
        "preinstalled": list(args.preinstalled),
        "requirements": runtime,
        "build_requirements": build_pins,
        "left_out": LEFT_OUT,
        "wheels": sizes,
        "total_bytes": total,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for name, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
        print(f"{size / 2**20:8.2f} MiB  {name}")
    print(f"{total / 2**20:8.2f} MiB  in {len(wheels)} wheels, {out}")
    if total > args.max_mib * 2**20:
        print(f"the wheelhouse exceeds {args.max_mib} MiB", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="resolve, download and repack into --out")
    b.add_argument("--out", required=True)
    b.add_argument("--python-version", default="3.12")
    b.add_argument("--platform", default="manylinux2014_x86_64")
    b.add_argument("--preinstalled", nargs="*", default=list(PREINSTALLED))
    b.add_argument("--max-mib", type=float, default=60.0)
    c = sub.add_parser("check-record", help="check that each wheel's RECORD matches its files")
    c.add_argument("wheels", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "build":
        if not re.fullmatch(r"3\.\d+", args.python_version):
            parser.error(f"--python-version must look like 3.12, got {args.python_version!r}")
        return build(args)
    failed = 0
    for wheel in args.wheels:
        problems = record_problems(Path(wheel))
        print(f"{wheel}: {'ok' if not problems else '; '.join(problems[:5])}")
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
