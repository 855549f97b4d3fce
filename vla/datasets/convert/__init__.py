"""Converters: one reader per source format, each yielding episodes in the store's vocabulary."""

from vla.datasets.convert.base import CONVERTERS, Converter, convert, get_converter

__all__ = ["CONVERTERS", "Converter", "convert", "get_converter"]
