"""Build of zbigarray: the C virtual-memory core and the Cython modules over it.

The core (zbigarray/bigfile/virtmem/: its C sources and headers) is compiled
with strict warnings into a static library, linked into the one extension that calls it,
zbigarray.bigfile._bigfile: the core has process-wide state (the SIGSEGV
handler, the VMA registry, the default RAM), so exactly one copy of it may be
loaded.  The other Cython modules (_blkbuf, _errors, _pyfile) do not call
the core; see the cimport order in zbigarray/bigfile/_bigfile.pxd.
Cython's generated C is compiled with the default flags: it does not build
warning-free under -Wextra -Werror.

Two kinds of build (README, "Building and releasing"):

- the project's own (CI, developers), with ZBIGARRAY_DEVELOP=1 in the
  environment: the core's warnings are errors, and debug information is kept
  for gdb and the sanitizers;
- everyone else's (a wheel, `pip install` from an sdist or a git URL): no
  -Werror, since a compiler we have never tried may warn where ours does not,
  and that must not stop an install; no debug information (-g0, and the linker
  drops any that static objects bring), which is most of an unstripped
  extension's size.

An environment variable, not a guess from a .git directory: `pip install
git+URL` builds a user's clone of the repository too.

Metadata and package data are in pyproject.toml.
"""

import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_clib import build_clib
from setuptools.command.build_ext import build_ext

BIGFILE = os.path.join("zbigarray", "bigfile")
CORE_DIR = os.path.join(BIGFILE, "virtmem")
CORE_LIB = "zbigvirtmem"
DEVELOP = os.environ.get("ZBIGARRAY_DEVELOP", "") not in ("", "0")
# Appended after Python's own flags (which carry -g), so -g0 wins.  The
# symbol table stays (--strip-debug, not -s): function names in a user's
# backtrace or core dump are worth its ~80 KB.
NODEBUG_CFLAGS = [] if DEVELOP else ["-g0"]
NODEBUG_LDFLAGS = [] if DEVELOP else ["-Wl,--strip-debug"]
CORE_CFLAGS = ["-Wall", "-Wextra", "-std=gnu11"] + (["-Werror"] if DEVELOP else NODEBUG_CFLAGS)


CORE_SOURCES = sorted(glob.glob(os.path.join(CORE_DIR, "*.c")))
CORE_HEADERS = sorted(glob.glob(os.path.join(CORE_DIR, "*.h")))


class build_clib_exact(build_clib):
    """build_clib whose archive holds exactly the current sources: ``ar``
    only adds and replaces members, so the object of a renamed or deleted
    core file would otherwise stay in the library and could be linked."""

    def build_libraries(self, libraries: list[tuple[str, dict]]) -> None:
        stamps = {}
        for name, info in libraries:
            archive = os.path.join(self.build_clib, self.compiler.library_filename(name))
            stamp, sources = archive + ".sources", "\n".join(info["sources"])
            stamps[stamp] = sources
            if not os.path.exists(stamp) or open(stamp).read() != sources:
                if os.path.exists(archive):
                    os.remove(archive)
        super().build_libraries(libraries)
        for stamp, sources in stamps.items():
            with open(stamp, "w") as out:
                out.write(sources)


class build_ext_with_core(build_ext):
    """build_ext that builds the core library first and relinks when it
    changes (plain build_ext neither runs build_clib nor tracks the .a)."""

    def run(self) -> None:
        self.run_command("build_clib")
        clib = self.get_finalized_command("build_clib")
        archive = os.path.join(
            clib.build_clib, clib.compiler.library_filename(CORE_LIB))
        for ext in self.extensions:
            if CORE_LIB in ext.libraries:
                ext.depends.append(archive)
        super().run()


def extension(name: str, *, core: bool) -> Extension:
    return Extension(
        f"zbigarray.bigfile.{name}",
        sources=[os.path.join(BIGFILE, f"{name}.pyx")],
        include_dirs=[CORE_DIR],
        depends=CORE_HEADERS,
        extra_compile_args=NODEBUG_CFLAGS,
        extra_link_args=NODEBUG_LDFLAGS,
        # The static core first, then what it needs.
        libraries=[CORE_LIB, "pthread"] if core else [],
    )


setup(
    libraries=[(CORE_LIB, {
        "sources": CORE_SOURCES,
        "include_dirs": [CORE_DIR],
        "cflags": CORE_CFLAGS,
        "obj_deps": {"": CORE_HEADERS},
    })],
    ext_modules=cythonize(
        [extension("_bigfile", core=True),
         extension("_blkbuf", core=False),
         extension("_errors", core=False),
         extension("_pyfile", core=False)],
        build_dir=os.path.join("build", "cython"),
        compiler_directives={"language_level": "3"},
    ),
    cmdclass={"build_clib": build_clib_exact, "build_ext": build_ext_with_core},
)
