"""Build the compiled hot path (``_fastpath/*.pyx``) as one extension per module.

Knobs (environment):
  LLMEDGE_NO_EXTENSIONS=1  build nothing compiled: a pure-Python install
  LLMEDGE_DEBUG=1          annotated HTML and line tracing (for profilers and coverage)
  LLMEDGE_SANITIZE=1       build with ASan/UBSan
"""

import glob
import os
import sys

from setuptools import Extension, setup

CYTHON_MIN = (3, 0, 10)

NO_EXTENSIONS = bool(os.environ.get("LLMEDGE_NO_EXTENSIONS")) or sys.implementation.name != "cpython"
DEBUG = bool(os.environ.get("LLMEDGE_DEBUG"))
SANITIZE = bool(os.environ.get("LLMEDGE_SANITIZE"))


def _extensions():
    try:
        import Cython
        from Cython.Build import cythonize
    except ImportError:
        sys.exit("llmedge needs Cython >= %s to build _fastpath; pip install 'Cython>=%s'"
                 % (".".join(map(str, CYTHON_MIN)), ".".join(map(str, CYTHON_MIN))))
    version = tuple(int(p) for p in Cython.__version__.split(".")[:3] if p.isdigit())
    if version < CYTHON_MIN:
        sys.exit("llmedge needs Cython >= %s, found %s"
                 % (".".join(map(str, CYTHON_MIN)), Cython.__version__))

    compile_args = ["-O3"]
    link_args = []
    macros = []
    directives = {"language_level": 3, "embedsignature": True}
    if DEBUG:
        macros += [("CYTHON_TRACE", "1")]
        directives["linetrace"] = True
    if SANITIZE:
        compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
        link_args += ["-fsanitize=address,undefined"]

    modules = []
    for pyx in sorted(glob.glob(os.path.join("_fastpath", "*.pyx"))):
        name = "_fastpath." + os.path.splitext(os.path.basename(pyx))[0]
        modules.append(Extension(name, [pyx], extra_compile_args=compile_args,
                                 extra_link_args=link_args, define_macros=macros))
    return cythonize(modules, compiler_directives=directives, annotate=DEBUG)


setup(ext_modules=[] if NO_EXTENSIONS else _extensions())
