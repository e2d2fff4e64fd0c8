import sys

from privrad.cli import main

sys.exit(main())
