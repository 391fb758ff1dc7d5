"""Fixtures for every test module here: ``world``, the small valid files of bad_input_files.py."""
from bad_input_files import world  # noqa: F401 (pytest finds the fixture here)
