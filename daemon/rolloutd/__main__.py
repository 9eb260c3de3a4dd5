"""`python -m rolloutd ...` runs the command line (`rolloutd.tools.cli`)."""

from rolloutd.tools.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
