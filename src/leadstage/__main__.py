import sys

from leadstage.cli import main

sys.exit(main())
