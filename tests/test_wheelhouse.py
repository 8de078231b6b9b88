"""The offline parts of tools/wheelhouse.py: the dependency closure that decides what the
wheelhouse holds, and the repacking of a wheel with a RECORD that matches its files."""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from wheelhouse import (  # noqa: E402
    LEFT_OUT,
    RAY_DROP,
    RAY_KEEP,
    closure,
    main,
    record_hash,
    record_problems,
    repack_wheel,
    target_environment,
    wheelhouse_pins,
)

ENV = target_environment("3.12", "manylinux2014_x86_64")


def _report(packages: dict[str, tuple[str, list[str]]]) -> dict:
    """A pip installation report holding `name: (version, requires_dist)`."""
    return {
        "install": [
            {"metadata": {"name": name, "version": version, "requires_dist": requires}}
            for name, (version, requires) in packages.items()
        ]
    }


REPORT = _report(
    {
        "app-core": ("1.0", ["ray[default]>=2", "Solver_Lib", 'oldpy; python_version < "3.11"']),
        "ray": (
            "2.60.0",
            [
                "click",
                'aiohttp; extra == "default"',
                'virtualenv; extra == "default"',
                'rllib-deps; extra == "rllib"',
                'winonly; sys_platform == "win32"',
            ],
        ),
        "solver-lib": ("3.1", ["numpy"]),
        "numpy": ("2.2.6", []),
        "click": ("8.5.1", []),
        "aiohttp": ("3.14.5", ["yarl", 'speedups; extra == "speedups"']),
        "yarl": ("1.25.1", []),
        "speedups": ("1.0", []),
        "virtualenv": ("21.0", ["distlib"]),
        "distlib": ("0.4.4", []),
        "rllib-deps": ("1.0", []),
        "winonly": ("1.0", []),
        "oldpy": ("1.0", []),
        "torch": ("2.13.0", ["numpy", "filelock"]),
        "filelock": ("4.3.2", []),
    }
)
REQUIRES = {
    name.replace("_", "-").lower(): item["metadata"]["requires_dist"]
    for name, item in ((i["metadata"]["name"], i) for i in REPORT["install"])
}


def test_target_environment_names_the_python_and_the_machine():
    assert ENV["python_version"] == "3.12" and ENV["platform_machine"] == "x86_64"
    assert target_environment("3.11", "manylinux_2_28_aarch64")["platform_machine"] == "aarch64"


def test_closure_follows_requested_extras_and_markers_of_the_target_only():
    got = closure(REQUIRES, ["app-core"], ENV)
    # ray[default] brings aiohttp and virtualenv, not rllib's or Windows' packages; the
    # python_version < 3.11 marker is false on 3.12; aiohttp's extra was not requested.
    assert got == {
        "app-core", "ray", "click", "aiohttp", "yarl", "virtualenv", "distlib", "solver-lib",
        "numpy",
    }  # fmt: skip
    assert "oldpy" in closure(REQUIRES, ["app-core"], target_environment("3.10", "x86_64"))
    assert closure(REQUIRES, ["ray"], ENV) == {"ray", "click"}  # no extra, no aiohttp
    assert closure(REQUIRES, ["ray", "ray[rllib]"], ENV) == {"ray", "click", "rllib-deps"}
    assert closure(REQUIRES, ["not-in-the-report"], ENV) == set()


def test_wheelhouse_holds_what_is_needed_minus_the_preinstalled_closure_and_left_out():
    pins = wheelhouse_pins(REPORT, ["app-core"], ["torch", "aiohttp"], ENV)
    # numpy comes with torch, yarl with aiohttp: the node has them.
    assert pins == {
        "app-core": "1.0", "click": "8.5.1", "distlib": "0.4.4", "ray": "2.60.0",
        "solver-lib": "3.1", "virtualenv": "21.0",
    }  # fmt: skip
    lean = wheelhouse_pins(REPORT, ["app-core"], ["torch", "aiohttp"], ENV, ["VirtualEnv"])
    assert set(pins) - set(lean) == {"virtualenv", "distlib"}  # distlib only came with it


def _wheel(path: Path, files: dict[str, bytes], record_rows: list[str] | None = None) -> Path:
    """A wheel with `files` and a RECORD listing them (or the given rows)."""
    rows = record_rows
    if rows is None:
        rows = [f"{name},{record_hash(data)},{len(data)}" for name, data in files.items()]
        rows.append("pkg-1.0.dist-info/RECORD,,")
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("pkg-1.0.dist-info/RECORD", "\n".join(rows) + "\n")
    return path


FILES = {
    "ray/__init__.py": b"x = 1\n",
    "ray/jars/ray_dist.jar": b"J" * 5000,
    "ray/rllib/algo.py": b"import ray\n" * 50,
    "ray/dashboard/client/build/index.html": b"<html></html>",
    "ray/dashboard/client/build/static/js/main.js": b"var a=1;" * 300,
    "ray/dashboard/client/build/static/js/tiny.js": b"1",
    "ray/dashboard/client/build/static/css/main.css": b"a{}" * 100,
    "pkg-1.0.dist-info/METADATA": b"Name: pkg\n",
}


def test_record_hash_is_urlsafe_base64_sha256_without_padding():
    digest = base64.urlsafe_b64encode(hashlib.sha256(b"abc").digest()).decode().rstrip("=")
    assert record_hash(b"abc") == f"sha256={digest}"
    assert "=" not in record_hash(b"abc").removeprefix("sha256=")


def test_repacked_wheel_leaves_out_the_dropped_paths_and_its_record_matches(tmp_path):
    source = _wheel(tmp_path / "pkg-1.0-py3-none-any.whl", FILES)
    assert record_problems(source) == []
    target = tmp_path / "out.whl"
    counts = repack_wheel(source, target, RAY_DROP, RAY_KEEP)
    with zipfile.ZipFile(target) as z:
        names = set(z.namelist())
    assert names == {
        "ray/__init__.py",
        "ray/dashboard/client/build/index.html",
        "ray/dashboard/client/build/static/js/tiny.js",  # the smallest file kept under js/
        "pkg-1.0.dist-info/METADATA",
        "pkg-1.0.dist-info/RECORD",
    }
    assert counts == {"kept": 4, "dropped": 4, "dropped_bytes": 5000 + 550 + 2400 + 300}
    assert record_problems(target) == []
    # Repacking in place gives the same files.
    repack_wheel(source, source, RAY_DROP, RAY_KEEP)
    with zipfile.ZipFile(source) as z:
        assert set(z.namelist()) == names


def test_record_problems_names_each_mismatch(tmp_path):
    files = {"a.py": b"a", "b.py": b"bb", "pkg-1.0.dist-info/METADATA": b"m"}
    rows = [
        f"a.py,{record_hash(b'not a')},1",  # wrong hash
        f"b.py,{record_hash(b'bb')},3",  # wrong size
        f"gone.py,{record_hash(b'')},0",  # listed, not in the wheel
        "pkg-1.0.dist-info/RECORD,,",
    ]  # METADATA is in the wheel but not listed
    problems = record_problems(_wheel(tmp_path / "bad.whl", files, rows))
    assert sorted(p.split(":")[0] for p in problems) == [
        "a.py",
        "b.py",
        "gone.py",
        "pkg-1.0.dist-info/METADATA",
    ]
    assert main(["check-record", str(tmp_path / "bad.whl")]) == 1


def test_every_left_out_package_says_why():
    assert LEFT_OUT and all(len(reason) > 20 for reason in LEFT_OUT.values())


def test_a_bad_python_version_is_refused_before_any_network_step(capsys):
    with pytest.raises(SystemExit) as info:
        main(["build", "--out", "/nonexistent", "--python-version", "312"])
    assert info.value.code == 2
    assert "--python-version must look like 3.12" in capsys.readouterr().err
