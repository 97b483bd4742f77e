import sys

from vlatrim.cli.main import main

sys.exit(main())
