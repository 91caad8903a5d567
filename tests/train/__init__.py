"""Tests of seglm training (a package so that helpers import relatively and names stay unique)."""
