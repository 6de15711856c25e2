"""``python -m visionpipe``: the visionpipe command line."""

from visionpipe.cli import main

if __name__ == "__main__":
    main()
