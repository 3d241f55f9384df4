"""Build hook: the data plane's hot-path modules compiled with mypyc, on request.

Everything about the package is declared in pyproject.toml; this file only adds C
extensions when ``SPLITPROXY_COMPILE=1``:

    SPLITPROXY_COMPILE=1 pip install --no-build-isolation .

mypyc (part of mypy) turns the type-annotated modules below into C extensions: the same
code and behaviour, about 30 % less CPU per proxied request (bench/README.md). Without the
variable — editable installs, development, the default ``make test`` venv — the package
stays pure Python, so an edited ``.py`` is always the code that runs (a compiled ``.so``
beside its source would silently win over it).

``--no-build-isolation``: mypyc type-checks the modules first (mypy --strict, config in
pyproject.toml) and needs the installed dependencies to see their types. ``make compiled``
builds it this way into ``.venv-compiled``; the Dockerfile does the same in a build stage.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

# Every module a proxied request runs through, and the shadow path a mirrored one adds
# (mirrors, legs, the comparison). The admin API, store, workers and CLI stay interpreted:
# they are not per request. Each module here gave part of the gain (bench/README.md).
HOT_PATH = [
    "proxy/forwarder.py",
    "proxy/upstream.py",
    "proxy/headers.py",
    "proxy/routing.py",
    "proxy/accesslog.py",
    "proxy/metrics.py",
    "proxy/runtime.py",
    "proxy/shadow.py",
    "proxy/diffing.py",
]

# The shadow diff's JSON walk in C on yyjson (native/README.md), in every build, editable
# ones included: it is not a copy of a .py file that could go stale, and proxy/diffing.py
# falls back to its Python walk when the module is missing. ``optional``: an install on a
# machine without a C compiler still succeeds, with the Python walk.
JSONDIFF = Extension(
    "proxy._jsondiff",
    sources=["native/jsondiff.c", "native/yyjson/yyjson.c"],
    include_dirs=["native/yyjson"],
    # yyjson without its non-standard reading modes (comments, NaN, trailing commas, invalid
    # UTF-8), which jsondiff.c never asks for: its reader is ~17 % faster without the checks
    # for them (61 -> 50 us for the 64 KiB benchmark body, measured in bench/README.md).
    define_macros=[("YYJSON_DISABLE_NON_STANDARD", "1")],
    extra_compile_args=["-O3"],
    optional=True,
)

ext_modules = [JSONDIFF]
if os.environ.get("SPLITPROXY_COMPILE") == "1":
    from mypyc.build import mypycify

    ext_modules += mypycify(HOT_PATH, opt_level="3")

setup(ext_modules=ext_modules)
