"""Harvest test fixtures live in tests/conftest.py (enwiki_dump is shared with the demo test)."""
