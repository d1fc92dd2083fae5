"""The errors export raises on bad input or a model that fails its checks."""

from __future__ import annotations


class ExportError(ValueError):
    """Bad export input (child, option, folder) or an export that cannot be done."""


class UnsupportedOpError(ExportError):
    """A converted model needs ops outside TFLite's built-in set (Flex / select TF
    ops, custom ops or resource-variable ops)."""


class VerificationError(ExportError):
    """An exported file does not match the Keras child within the thresholds."""


class InvalidModelError(ExportError):
    """A file named .tflite is not a TFLite model LiteRT can load (the message names it)."""
