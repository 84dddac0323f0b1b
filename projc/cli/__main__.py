import sys

from projc.cli.main import main

sys.exit(main())
