"""Check what a release build put into the sdist and the wheel.

    python .ci/check_dist.py DIST_DIR

DIST_DIR holds one zbigarray-*.tar.gz and one zbigarray-*.whl, as
`python -m build` leaves them.  Exits non-zero, listing every problem found.
The rules, and why, are in README.md ("Building and releasing").
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

# Needed to build and test from the sdist alone.
SDIST_NEEDS = [
    "LICENSE", "README.md", "pyproject.toml", "setup.py", "MANIFEST.in",
    "zbigarray/py.typed",
    "zbigarray/bigfile/_bigfile.pyx", "zbigarray/bigfile/_bigfile.pxd",
    "zbigarray/bigfile/virtmem.pxd", "zbigarray/bigfile/_bigfile.pyi",
    "zbigarray/bigfile/virtmem/virtmem.h", "zbigarray/bigfile/virtmem/virtmem_int.h",
    "zbigarray/bigfile/virtmem/fault.c",
    "tests/conftest.py", "tests/c/Makefile", "tests/c/runner.c", "tests/c/task.h",
    "tests/storage/conftest.py", "tests/bigfile/conformance.py",
    "docs/usage.md", "docs/virtmem.md",
]
# Never in the sdist: build products of the checkout it was made from.
SDIST_NEVER = (".so", ".o", ".a", ".pyc")
# Needed at run time or by type checkers.
WHEEL_NEEDS = ["zbigarray/py.typed", "zbigarray/bigfile/_bigfile.pyi"]
# Sources a wheel does not need (README: no Cython cimport API is offered).
WHEEL_NEVER = (".c", ".h", ".pyx", ".pxd")


def check_sdist(path: str) -> list[str]:
    with tarfile.open(path) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    problems = [f"sdist lacks {n}" for n in SDIST_NEEDS if n not in names]
    problems += [f"sdist carries build product {n}" for n in sorted(names)
                 if n.endswith(SDIST_NEVER)]
    for src in glob.glob("zbigarray/bigfile/virtmem/*.[ch]") + glob.glob("tests/c/*.[ch]"):
        if src not in names:
            problems.append(f"sdist lacks {src}")
    return problems


def check_wheel(path: str) -> list[str]:
    problems = []
    with zipfile.ZipFile(path) as whl:
        names = whl.namelist()
        problems += [f"wheel lacks {n}" for n in WHEEL_NEEDS if n not in names]
        problems += [f"wheel carries source {n}" for n in names if n.endswith(WHEEL_NEVER)]
        # Every module of the checkout: a subpackage the build does not find
        # would be missing only from installs, never from the tests' tree.
        modules = sorted(glob.glob("zbigarray/**/*.py", recursive=True))
        problems += [f"wheel lacks module {m}" for m in modules if m not in names]
        if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
            problems.append("wheel lacks its LICENSE")
        meta = whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        if "License-Expression: MIT" not in meta.splitlines():
            problems.append("wheel METADATA has no 'License-Expression: MIT'")
        sos = [n for n in names if n.endswith(".so")]
        if not sos:
            problems.append("wheel has no extension module")
        with tempfile.TemporaryDirectory() as tmp:
            for n in sos:
                so = whl.extract(n, tmp)
                sections = subprocess.run(["readelf", "-SW", so], capture_output=True,
                                          text=True, check=True).stdout
                debug = sorted({w for w in sections.split() if w.startswith(".debug")})
                if debug:
                    problems.append(f"{n} carries debug sections {debug}")
    return problems


def main(dist: str) -> int:
    sdists = glob.glob(os.path.join(dist, "zbigarray-*.tar.gz"))
    wheels = glob.glob(os.path.join(dist, "zbigarray-*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        print(f"expected one sdist and one wheel in {dist}: {sdists + wheels}")
        return 1
    problems = check_sdist(sdists[0]) + check_wheel(wheels[0])
    for p in problems:
        print("dist:", p)
    if not problems:
        print(f"dist: {os.path.basename(sdists[0])} and {os.path.basename(wheels[0])}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
