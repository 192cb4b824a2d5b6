"""Konsil: secure messaging and clinical-workflow server (shared kernel)."""

__version__ = "0.1.0"
