"""``python -m ppo_lib.classroom``: see :func:`ppo_lib.classroom.main`."""

import sys

from . import main

sys.exit(main())
