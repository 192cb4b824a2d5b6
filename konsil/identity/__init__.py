"""Organisations, practitioners, patients and accounts."""
