"""Tests of seglm.losses (a package so that helpers import relatively and names stay unique)."""
