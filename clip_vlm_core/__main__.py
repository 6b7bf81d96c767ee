import os
import sys

# `python -m clip_vlm_core` puts the current folder first on sys.path, so a folder holding data (a bag
# that carries `std_msgs/__init__.py`) would shadow every module imported from here on. Drop it, as
# `python -P` does; clip_vlm_core itself is already imported, and its modules are found through it.
if sys.path and not sys.flags.safe_path and os.path.realpath(sys.path[0] or ".") == os.path.realpath(os.getcwd()):
    del sys.path[0]

from clip_vlm_core.cli import main  # noqa: E402 - after the sys.path fix above

sys.exit(main())
