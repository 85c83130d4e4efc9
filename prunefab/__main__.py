import sys

from prunefab.cli import main

sys.exit(main())
