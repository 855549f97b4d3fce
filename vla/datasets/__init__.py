"""The data layer: the store, converters from source formats, the window sampler, normalisers."""
