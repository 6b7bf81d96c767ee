"""Message types named by a bag, resolved only to installed ROS 2 interface packages.

A type name is data (metadata.yaml, a storage file's tables), so it never reaches `import` as such:
1. it must read `package/msg/Name` (or `package/Name`, which rosbag2 reads as a message, or
   `package/srv/Name_Event`, a service event as rosbag2 records it), with a package name as REP 144
   allows and a message name as rosidl allows;
2. the package must be registered as ROS interfaces in an ament prefix, the way ROS finds them:
   `share/ament_index/resource_index/rosidl_interfaces/<package>` under each AMENT_PREFIX_PATH entry,
   then under this Python environment's prefix (where the ROS wheels from PyPI install), and that
   registration must list the message's interface file;
3. the package's Python code is loaded from that prefix's own site-packages by file location, never
   found through sys.path (so never from the current folder), and so are the interface packages it
   depends on (ament's `package_run_dependencies`). A package already imported from anywhere else is
   refused.
Anything else is not played: `UnplayableType` says why, and the player skips the topic and reports it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path

PACKAGE = r"[a-z](?:[a-z0-9]|_(?!_))*(?<!_)"  # REP 144: lower case, digits, single underscores
# package/msg/Name; package/Name as rosbag2 reads it (a message); package/srv/Name_Event (a service event)
TYPE_NAME = re.compile(rf"(?P<package>{PACKAGE})/(?:(?:msg/)?(?P<msg>[A-Z][A-Za-z0-9]*)|srv/(?P<srv>[A-Z][A-Za-z0-9]*)_Event)")
INDEX = Path("share", "ament_index", "resource_index")
_MAX_RESOURCE_BYTES = 1 << 20


class UnplayableType(Exception):
    """A message type that is not played, and why (one clause: 'X is not an installed ...')."""


def ament_prefixes() -> list[Path]:
    """Where ROS looks for packages: AMENT_PREFIX_PATH's folders, then this Python environment's prefix."""
    entries = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    entries.append(Path(sys.prefix))
    seen, prefixes = set(), []
    for prefix in entries:
        key = str(prefix.resolve())
        if key not in seen and (prefix / INDEX).is_dir():
            seen.add(key)
            prefixes.append(prefix)
    return prefixes


def message_class(msgtype: str) -> type:
    """The rclpy message class of `msgtype`, from an installed interface package; else UnplayableType."""
    match = TYPE_NAME.fullmatch(msgtype) if isinstance(msgtype, str) else None
    if match is None:
        raise UnplayableType(f"its type {msgtype!r} is not a ROS 2 message type name (package/msg/Name)")
    package, name, service = match["package"], match["msg"], match["srv"]
    interface = f"msg/{name}" if name else f"srv/{service}"
    prefix = _registered_prefix(package, interface, msgtype)
    module = _load_package(package, prefix, set())
    kind = "msg" if name else "srv"
    try:
        submodule = importlib.import_module(f"{package}.{kind}")
    except ImportError as exc:
        raise UnplayableType(f"the Python code of {package}/{kind} cannot be loaded from {prefix} ({exc})") from None
    if Path(submodule.__file__).resolve().parent.parent != Path(module.__file__).resolve().parent:
        raise UnplayableType(f"{package}.{kind} was loaded from outside {package}'s installed package")
    cls = getattr(submodule, name or f"{service}_Event", None)
    if not isinstance(cls, type) or not hasattr(cls, "_TYPE_SUPPORT"):
        raise UnplayableType(f"{package}'s Python code has no message class for {msgtype}")
    return cls


def _registered_prefix(package: str, interface: str, msgtype: str) -> Path:
    for prefix in ament_prefixes():
        marker = prefix / INDEX / "rosidl_interfaces" / package
        if not marker.is_file():
            continue
        with marker.open("rb") as f:
            listed = {line.strip() for line in f.read(_MAX_RESOURCE_BYTES).decode("utf-8", "replace").splitlines()}
        if not {f"{interface}.idl", f"{interface}.msg", f"{interface}.srv"} & listed:
            raise UnplayableType(f"its type {msgtype} is not among the interfaces of the installed package "
                                 f"{package} ({prefix})")
        return prefix
    raise UnplayableType(f"its type {msgtype} is not installed (no ROS 2 interface package {package} in "
                         f"AMENT_PREFIX_PATH or {sys.prefix})")


def _python_dir(prefix: Path, package: str) -> Path | None:
    """The package's Python folder in the prefix: lib/pythonX.Y/site-packages (pip, colcon, /opt/ros) or
    Debian's local/lib/pythonX.Y/dist-packages."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for base in (prefix / "lib" / version / "site-packages", prefix / "local" / "lib" / version / "dist-packages",
                 prefix / "lib" / version / "dist-packages", prefix / "lib" / "python3" / "dist-packages"):
        if (base / package / "__init__.py").is_file():
            return base / package
    return None


def _load_package(package: str, prefix: Path, loading: set[str]) -> object:
    """Import `package` from `prefix` by file location (its interface dependencies first); an already
    imported module of that name must be that very package."""
    folder = _python_dir(prefix, package)
    if folder is None:
        raise UnplayableType(f"the installed package {package} has no Python code in {prefix}")
    loaded = sys.modules.get(package)
    if loaded is not None:
        origin = getattr(loaded, "__file__", None)
        if origin is None or Path(origin).resolve().parent != folder.resolve():
            raise UnplayableType(f"a module named {package} is already loaded from {origin or 'elsewhere'}, "
                                 f"not from the installed package in {folder}")
        return loaded
    loading.add(package)
    for dependency in _interface_dependencies(prefix, package):
        if dependency not in loading:
            dep_prefix = next((p for p in ament_prefixes()
                               if (p / INDEX / "rosidl_interfaces" / dependency).is_file()), None)
            if dep_prefix is not None:
                _load_package(dependency, dep_prefix, loading)
    spec = importlib.util.spec_from_file_location(package, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[package]
        raise UnplayableType(f"the installed package {package} cannot be loaded from {folder} ({exc})") from None
    return module


def _interface_dependencies(prefix: Path, package: str) -> list[str]:
    marker = prefix / INDEX / "package_run_dependencies" / package
    if not marker.is_file():
        return []
    with marker.open("rb") as f:
        text = f.read(_MAX_RESOURCE_BYTES).decode("utf-8", "replace")
    return [name for name in text.replace("\n", ";").split(";") if re.fullmatch(PACKAGE, name)]
