import sys

from tunefork.cli import main

sys.exit(main())
