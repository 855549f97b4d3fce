"""Mixture of Horizons (and with dynamic inference) vs the fixed 10-step chunk,
3 training seeds x 30 paired episodes at the demo budget (see comparisons.py for the protocol).
The last line is the paired success difference with its bootstrap 95% interval, in points.

    .venv/bin/python benchmarks/compare_moh_fixed.py [--seeds 0,1,2] [--out DIR]
"""

from comparisons import main

if __name__ == "__main__":
    main(["moh_vs_fixed"])
