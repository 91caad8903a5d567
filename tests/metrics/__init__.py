"""Tests of seglm.metrics (a package so that test module names stay unique)."""
