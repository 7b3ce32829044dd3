"""`python -m codecomplete`, the same as the console script."""
import sys

from .cli import main

if __name__ == "__main__":      # worker processes started by "spawn" (a large first index) import this module too
    sys.exit(main())
