"""Python imports this at start-up when its folder is on PYTHONPATH, as
tests/test_benchmarks_gpu.py puts it: the process (and every process it starts) then finds only
the standard library, the repository's own modules and the top-level modules that
``SEGLM_IMAGE_MODULES`` lists (comma-separated), as on the GPU machine's image. Any other
installed package is absent: ``import`` raises ModuleNotFoundError and
``importlib.util.find_spec`` returns None, as libraries that probe for optional packages expect.
"""

import importlib.machinery
import os
import site
import sys
import sysconfig

ALLOWED = os.environ.get("SEGLM_IMAGE_MODULES")

if ALLOWED is not None:
    allowed = set(ALLOWED.split(","))
    repository = os.environ["SEGLM_REPOSITORY"]
    installed = (*site.getsitepackages(), site.getusersitepackages())
    standard = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])

    def ours(where: str) -> bool:
        """The repository's modules and the standard library's, not what is installed (a
        virtual environment may lie inside the repository, as make's .venv does)."""
        if where.startswith(installed):
            return False
        return where.startswith((repository, *standard))

    class ImageOnly(importlib.machinery.PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):  # type: ignore[no-untyped-def]
            spec = super().find_spec(name, path, target)
            if spec is None or "." in name or name in allowed:
                return spec
            locations = list(spec.submodule_search_locations or [])
            where = spec.origin if spec.origin not in (None, "namespace") else locations[0]
            return spec if ours(str(where)) else None

    sys.meta_path[:] = [
        ImageOnly if finder is importlib.machinery.PathFinder else finder
        for finder in sys.meta_path
    ]
