"""``python -m bundlelab.cli`` runs the command line (the package registered the commands)."""

from ._app import main

if __name__ == "__main__":
    main()
