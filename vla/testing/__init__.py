"""Test doubles and fixture writers for the test suite and benchmarks: nothing in the product imports them.

- `calvin_fake`: a kinematic CALVIN-like backend (calvin_env's info layout) and a scripted planner
  that solves some of its subtasks, for running the CALVIN protocol without the simulator;
- `eval_runs`: evaluation folders with chosen outcomes, written by the results log (comparison tests);
- `vlm`: a tiny random PaliGemma-style checkpoint for the Hugging Face VLM backbone;
- `lerobot_policy`: tiny random LeRobot ACT and diffusion policies saved with their processors;
- small datasets in each source format's real layout, written with the format's own tools:
  `lerobot` (LeRobot v3), `libero_hdf5` (synthetic LIBERO demos), `calvin_data` (a CALVIN split),
  `dp_zarr` (a Diffusion-Policy replay buffer).
"""
