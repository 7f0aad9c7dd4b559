import sys

from steadylm.cli import main

sys.exit(main())
