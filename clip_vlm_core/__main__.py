import sys

from clip_vlm_core.cli import main

sys.exit(main())
