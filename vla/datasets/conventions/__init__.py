"""Each benchmark's data conventions in one module (fps, cameras, keys, dims, embodiment, StoreSpec):
the converter, the simulator and the evaluation protocol all import them from here."""
