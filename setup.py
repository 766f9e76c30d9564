import sysconfig

from setuptools import setup

# One abi3 wheel serves every CPython >= 3.10; free-threaded builds cannot use
# the limited API, so they get a version-specific wheel.
options = {}
if not sysconfig.get_config_var("Py_GIL_DISABLED"):
    options["bdist_wheel"] = {"py_limited_api": "cp310"}

setup(cffi_modules=["csrc/build_native.py:ffibuilder"], options=options)
