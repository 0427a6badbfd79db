"""The GPU machine's Python has no MLflow, Snakemake, DVC or jsonschema. The CPU dry run of ``device_check.sh`` puts
this folder on PYTHONPATH so that they are missing here too: an import of one on the check's path then fails the
dry run in CI, instead of the GPU run minutes into a lease."""

import importlib.abc
import sys

ABSENT = ("mlflow", "snakemake", "dvc", "jsonschema")  # none of them is in the GPU image


class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(
                f"No module named '{name}' (absent on the GPU machine: the device check must not import it)", name=name
            )
        return None


sys.meta_path.insert(0, Absent())
