"""Test doubles and fixture writers for the test suite and benchmarks: nothing in the product imports them."""
