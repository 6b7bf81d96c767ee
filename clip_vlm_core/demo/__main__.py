"""`python -m clip_vlm_core.demo` (what `make demo` runs)."""

import sys

from clip_vlm_core.demo.run import main

sys.exit(main())
