"""How fast JSON parsers read the diff benchmark's 64 KiB body on this machine.

A diff of a JSON body seen for the first time parses it at least, so the fastest parser sets
the floor under ``compare()`` of a first-seen pair (bench_diff.py --pair-cost prints the C
walk's own parse as ``parse_us``). This times, in alternating batches, the body
(bench_diff.document(64 KiB), as bench/run.py's upstream serves it) parsed by:

- yyjson, native/yyjson as setup.py builds it (-O3, YYJSON_DISABLE_NON_STANDARD, the kept
  pool): what proxy._jsondiff uses;
- simdjson (SIMD; its DOM parser, the implementation it picks for this CPU), from the
  pysimdjson sdist on PyPI (downloaded once into --cache);
- orjson.loads and json.loads (Python objects; for scale).

    .venv/bin/python bench/parsers.py [--seconds 6] [--cache ~/.cache/splitproxy-bench]

Needs gcc and g++ (scripts/install-bench-deps.sh installs them) and, for its first run, PyPI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
from bench_diff import alternating_samples, document, timed_batch

ROOT = Path(__file__).resolve().parent.parent
YYJSON = ROOT / "native" / "yyjson"
SIMDJSON_SDIST = (
    "https://files.pythonhosted.org/packages/9c/24/"
    "65e3cad88e74ef8ca59fefded953eb78ebface8a3199c3a97fe318a7387b/pysimdjson-7.0.2.tar.gz"
)
SIMDJSON_SHA256 = "44cf276e48912a3b9c7ca362c14da8420a7ac15a9f1a16ec95becff86db3904a"

# One program per parser: parse the file `batch` times per sample, print each sample's µs a
# parse on its own line until stdin closes; the driver alternates them.
HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
PARSER_INCLUDE
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
    FILE *f = fopen(argv[1], "rb");
    static char buf[1 << 21];
    size_t n = fread(buf, 1, sizeof buf - 64, f);
    int batch = atoi(argv[2]);
    PARSER_SETUP
    char line[16];
    while (fgets(line, sizeof line, stdin)) {
        double t0 = now();
        for (int i = 0; i < batch; i++) {
            PARSER_PARSE
        }
        printf("%.3f\n", (now() - t0) / batch * 1e6);
        fflush(stdout);
    }
    return 0;
}
"""

YYJSON_PARTS = {
    "PARSER_INCLUDE": '#include "yyjson.h"',
    "PARSER_SETUP": "size_t need = yyjson_read_max_memory_usage(n, YYJSON_READ_BIGNUM_AS_RAW) + 256;"
    " char *pool = malloc(need); yyjson_alc alc;",
    "PARSER_PARSE": "yyjson_alc_pool_init(&alc, pool, need);"
    " yyjson_doc *d = yyjson_read_opts(buf, n, YYJSON_READ_BIGNUM_AS_RAW, &alc, NULL);"
    ' if (!d) { fprintf(stderr, "yyjson: not JSON\\n"); return 1; } yyjson_doc_free(d);',
}
SIMDJSON_PARTS = {
    "PARSER_INCLUDE": '#include "simdjson.h"',
    "PARSER_SETUP": "simdjson::dom::parser parser; simdjson::padded_string body(buf, n);"
    ' fprintf(stderr, "simdjson implementation: %s\\n",'
    " simdjson::get_active_implementation()->name().c_str());",
    "PARSER_PARSE": "simdjson::dom::element doc;"
    ' if (parser.parse(body).get(doc)) { fprintf(stderr, "simdjson: not JSON\\n"); return 1; }',
}


def fill(parts: dict[str, str]) -> str:
    text = HARNESS
    for name, code in parts.items():
        text = text.replace(name, code)
    return text


def simdjson_source(cache: Path) -> Path:
    """The directory holding simdjson.h and simdjson.cpp, from the pysimdjson sdist."""
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / "pysimdjson-7.0.2.tar.gz"
    if not sdist.exists():
        with urllib.request.urlopen(SIMDJSON_SDIST, timeout=60) as answer:  # a fixed https URL
            data = answer.read()
        got = hashlib.sha256(data).hexdigest()
        if got != SIMDJSON_SHA256:
            sys.exit(f"pysimdjson sdist: sha256 {got}, expected {SIMDJSON_SHA256}")
        sdist.write_bytes(data)
    out = cache / "pysimdjson-7.0.2"
    if not out.exists():
        with tarfile.open(sdist) as tar:
            tar.extractall(cache, filter="data")
    return out / "simdjson"


def build(tmp: Path, cache: Path) -> dict[str, list[str]]:
    yy_src = tmp / "yyjson_parse.c"
    yy_src.write_text(fill(YYJSON_PARTS))
    yy = tmp / "yyjson_parse"
    cc = [
        "gcc",
        "-O3",
        "-DNDEBUG",
        "-DYYJSON_DISABLE_NON_STANDARD=1",
        f"-I{YYJSON}",
        str(yy_src),
        str(YYJSON / "yyjson.c"),
    ]
    subprocess.run([*cc, "-o", str(yy)], check=True)
    sj_dir = simdjson_source(cache)
    sj_src = tmp / "simdjson_parse.cpp"
    sj_src.write_text(fill(SIMDJSON_PARTS))
    sj = tmp / "simdjson_parse"
    cxx = ["g++", "-O3", "-DNDEBUG", "-std=c++17", f"-I{sj_dir}", str(sj_src), str(sj_dir / "simdjson.cpp")]
    subprocess.run([*cxx, "-o", str(sj)], check=True)
    return {"yyjson (proxy._jsondiff's)": [str(yy)], "simdjson (DOM)": [str(sj)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="total time budget (default 6)")
    parser.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache" / "splitproxy-bench", help="where the sdist is kept"
    )
    args = parser.parse_args()
    body = json.dumps(document(64 << 10)).encode()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        path = tmp / "body.json"
        path.write_bytes(body)
        programs = build(tmp, args.cache)
        batch = 100
        procs = {
            name: subprocess.Popen(
                [*argv, str(path), str(batch)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            for name, argv in programs.items()
        }

        def ask(proc: subprocess.Popen[str]) -> Callable[[], float]:
            def run() -> float:  # one batch in the C program, timed there
                assert proc.stdin is not None
                assert proc.stdout is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
                return float(proc.stdout.readline())

            return run

        timed = {name: ask(proc) for name, proc in procs.items()}
        timed["orjson.loads"] = timed_batch(lambda: orjson.loads(body), batch // 10)
        timed["json.loads"] = timed_batch(lambda: json.loads(body), batch // 10)
        try:
            samples = dict(zip(timed, alternating_samples(list(timed.values()), args.seconds), strict=True))
        finally:
            for proc in procs.values():
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(timeout=10)
    print(f"the 64 KiB benchmark body ({len(body):,} bytes), µs a parse, median of alternating batches,")
    print("and the median of each batch's time over the yyjson batch beside it (this machine drifts):")
    base = samples[next(iter(programs))]
    for name, values in samples.items():
        paired = statistics.median(v / b for v, b in zip(values, base, strict=False))
        print(
            f"  {name:<28} {statistics.median(values):7.1f}  x{paired:5.2f} of yyjson"
            f"  (min {min(values):.1f}, {len(values)} batches)"
        )


if __name__ == "__main__":
    main()
