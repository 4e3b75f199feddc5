"""Build of the optional C extension ``xpcnn._fast._conv`` (everything else is in
pyproject.toml).

The extension holds the compiled convolution kernels (xpcnn/_fast/_conv.c). It is
``optional``: where no C compiler works, ``pip install .`` goes on without it and the
NumPy fast path serves (``xpcnn info`` says so). It uses only the stable ABI of
Python 3.11, so one wheel serves every later Python, and no NumPy headers. No
fast-math: NaN and infinities must propagate as on the generic path.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    """Compiler flags by compiler family (GCC and Clang take the same ones)."""

    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "msvc":
            flags = ["/O2"]
        else:
            flags = ["-O3", "-std=gnu11", "-fno-strict-aliasing", "-Wall"]
        for ext in self.extensions:
            ext.extra_compile_args = flags
        super().build_extensions()


setup(
    ext_modules=[
        Extension(
            "xpcnn._fast._conv",
            sources=["xpcnn/_fast/_conv.c"],
            depends=["xpcnn/_fast/_conv_kernels.h"],
            define_macros=[("Py_LIMITED_API", "0x030B0000")],
            py_limited_api=True,
            optional=True,
        )
    ],
    cmdclass={"build_ext": BuildExt},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
