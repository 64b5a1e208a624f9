"""Build script: only the Cython extension lives here; metadata is in pyproject.toml."""
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("htsgetr._ranges", ["htsgetr/_ranges.pyx"]),
    Extension("htsgetr._records", ["htsgetr/_records.pyx"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    ),
)
