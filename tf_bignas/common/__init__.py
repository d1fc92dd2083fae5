"""Helpers every stage shares: atomic file writes, one file digest, safe text.

May import: the standard library only.
"""
