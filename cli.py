"""Thin shim so ``python cli.py ...`` works from a checkout; the installed entry point is
``verispec.cli:main`` (this file is not installed)."""

from verispec.cli import main

if __name__ == "__main__":
    main()
