"""ament_python package `clip_vlm`: the caption node, its launch files and its default parameters.

The launch files live in this package's launch/ folder (the repo's top-level launch/ holds symlinks to
them), so the package is self-contained: `colcon build` copies it into a build folder and installs from
there, where a data_files path like ../../../launch would point nowhere. `pip install -e` (the venv)
installs the console script only; it finds no share/ folder, which nothing in the venv needs.
"""

from glob import glob

from setuptools import setup

PACKAGE = "clip_vlm"
# The distribution name differs from the ROS package name on purpose: pip normalises "clip_vlm" to
# "clip-vlm", the core project's own name, and installing this would uninstall the core.
DISTRIBUTION = "clip-vlm-ros2"

setup(
    name=DISTRIBUTION,
    version="0.1.0",
    packages=[PACKAGE],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", sorted(glob("launch/*.launch.py"))),
        (f"share/{PACKAGE}/config", sorted(glob("config/*.yaml"))),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="clip-vlm maintainers",
    maintainer_email="clip-vlm@example.com",
    description="ROS 2 node publishing scene captions of a car's cameras on /scene_caption.",
    license="Apache-2.0",
    entry_points={"console_scripts": [f"caption_node = {PACKAGE}.caption_node:main",
                                      f"caption_lifecycle_node = {PACKAGE}.lifecycle_node:main"]},
)
