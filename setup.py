"""Build hook: ship the model/pair cards (registry/) and the recipes (recipes/) inside the wheel.

Both folders stay at the top of the repository; the build copies them to ``lcf/_shipped/`` in the
wheel, where :mod:`lcf.shipped` finds them when lcf does not run from a checkout. Everything else
is in pyproject.toml.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("registry", "recipes")


class BuildPyWithCards(build_py):
    def run(self):
        super().run()
        root = Path(__file__).resolve().parent
        for name in SHIPPED:
            if (root / name).is_dir():
                shutil.copytree(root / name, Path(self.build_lib) / "lcf" / "_shipped" / name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithCards})
