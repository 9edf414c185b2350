"""``python -m cli``."""

from cli.app import main

if __name__ == "__main__":
    main(prog_name="python -m cli")
