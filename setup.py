"""Build: every rnnfast/*.pyx becomes an extension module linked with the whole C core (csrc/*.c).

Environment switches (for developers):
  RNNFAST_SANITIZE=1   build with -fsanitize=address,undefined (see README, "Sanitizer build")
  RNNFAST_DEBUG=1      -O0 -g and debug asserts in the C core
  RNNFAST_WERROR=1     warnings are errors (CI)
"""

import glob
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

csrc = sorted(glob.glob("csrc/*.c"))
headers = sorted(glob.glob("csrc/*.h"))
compile_args = [
    "-std=gnu11", "-O3", "-fopenmp", "-fno-math-errno", "-Wall", "-Wextra", "-Wno-unused-function", "-Wno-psabi"
]
link_args = ["-fopenmp"]
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
if os.environ.get("RNNFAST_DEBUG"):
    compile_args += ["-O0", "-g"]
    macros.append(("RF_DEBUG", "1"))
else:
    macros.append(("NDEBUG", "1"))
if os.environ.get("RNNFAST_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    compile_args += san + ["-g", "-O1"]  # -O1 (after -O3): what ASan recommends; builds ~3x faster
    link_args += san
if os.environ.get("RNNFAST_WERROR"):
    compile_args.append("-Werror")
if sys.platform == "darwin":  # Apple clang has no -fopenmp; build serial there.
    compile_args = [a for a in compile_args if a != "-fopenmp"]
    link_args = [a for a in link_args if a != "-fopenmp"]

extensions = [
    Extension(
        "rnnfast." + os.path.splitext(os.path.basename(pyx))[0],
        sources=[pyx] + csrc,
        include_dirs=["csrc", numpy.get_include()],
        depends=headers,  # a header edit rebuilds every extension
        define_macros=macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    for pyx in sorted(glob.glob("rnnfast/*.pyx"))
]



class BuildExtSerial(build_ext):
    """Every extension compiles the same csrc/*.c into the same object files; building extensions in
    parallel (-j) raced on them (a link could read a half-written object), so they are built in turn."""

    def finalize_options(self):
        super().finalize_options()
        self.parallel = None


setup(
    cmdclass={"build_ext": BuildExtSerial},
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
