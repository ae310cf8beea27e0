import sys

from lenet_hpo.cli import main

if __name__ == "__main__":
    sys.exit(main())
