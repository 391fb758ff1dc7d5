"""numpy_vit against timm at full size: every preset at full depth and native resolution, in float32 and
float64, and the resampled position embeddings at full depth.

parity_tests runs the heavy presets on their first blocks (``SHORTENED`` and ``RESAMPLED`` in
parity_tests/test_timm_parity.py say which and why); this script runs the same comparisons
(``compare_preset``, ``compare_resampled``) on the whole models, with the same tolerances
(parity_tests/conftest.py), and prints the same table as parity_tests. It exits with status 1 if any case
exceeds its tolerance. Needs torch and timm (the `test` extra).

    python bench/parity_full.py                    # every case, a few minutes on 2 cores
    python bench/parity_full.py -k large           # the cases whose label contains "large"
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "parity_tests"))
from conftest import MEASURED, TABLE_TITLE, parity_table, torch_setup  # noqa: E402
from test_timm_parity import PRESETS, RESAMPLED, compare_preset, compare_resampled  # noqa: E402


def cases():
    """(label, function, arguments): every preset in both dtypes, then every resampled input, none shortened."""
    for name in PRESETS:
        for dtype in (np.float32, np.float64):
            yield f"timm {name} {np.dtype(dtype).name}", compare_preset, (name, dtype)
    for name, size, _ in RESAMPLED:
        yield f"timm {name} @ {size[0]}x{size[1]} float32", compare_resampled, (name, size)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default="", help="run only the cases whose label contains this string")
    args = parser.parse_args(argv)
    torch_setup()
    failures = []
    start = time.perf_counter()
    for label, compare, arguments in cases():
        if args.k not in label:
            continue
        case_start = time.perf_counter()
        try:
            compare(*arguments)
        except AssertionError as error:
            failures.append(f"{label}: {error}")
        print(f"{label:<70} {time.perf_counter() - case_start:6.1f} s", file=sys.stderr, flush=True)
    print(f"{'-' * 10} {TABLE_TITLE} {'-' * 10}")
    print("\n".join(parity_table(MEASURED)))
    print(f"{len(MEASURED)} models compared in {time.perf_counter() - start:.0f} s; {len(failures)} over tolerance")
    for failure in failures:
        print("FAILED", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
