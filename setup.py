"""Builds the optional C kernels (radvar/_ckernels.c, loaded with ctypes by radvar/_native.py); everything
else is in pyproject.toml. Where no C compiler is found the build goes on without them (``optional``) and
radvar runs its numpy paths, which give the same results."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("radvar._ckernels", sources=["radvar/_ckernels.c"], optional=True,
                             extra_compile_args=["-O3", "-std=gnu11"])])
