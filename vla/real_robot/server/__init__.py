"""The policy server (`vla serve`) and its client: observations out, action chunks back, no pickle."""
