"""Tests of the CLI commands (a package so that test module names stay unique)."""
