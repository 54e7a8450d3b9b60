import sys

from fwtop.cli import main

sys.exit(main())
