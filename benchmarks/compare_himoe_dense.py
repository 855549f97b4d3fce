"""HiMoE vs a dense head at equal active parameters,
3 training seeds x 30 paired episodes at the demo budget (see comparisons.py for the protocol).
The last line is the paired success difference with its bootstrap 95% interval, in points.

    .venv/bin/python benchmarks/compare_himoe_dense.py [--seeds 0,1,2] [--out DIR]
"""

from comparisons import main

if __name__ == "__main__":
    main(["himoe_vs_dense"])
