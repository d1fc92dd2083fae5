"""Helpers every stage shares: atomic file writes.

May import: the standard library only.
"""
