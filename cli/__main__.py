"""``python -m cli``."""

from .app import main

if __name__ == "__main__":
    main(prog_name="python -m cli")
