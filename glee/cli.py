"""The ``glee`` command: a thin dispatcher over subcommands that are imported only when used.

Each subcommand is a module function ``main(argv: list[str] | None) -> int`` that parses its own arguments,
so a heavy or optional part (training, the chat bridge, the web app) costs nothing until it is called, and a
part missing from an installation gives a clear message instead of an import error at start-up.

Commands of the ``glee`` package are listed in ``COMMANDS``.  Other packages add theirs through the
``glee.commands`` entry-point group (``name = "module:function"``; this distribution registers ``train``,
``eval``, ``chat`` and ``app`` that way in ``pyproject.toml``), so ``glee``'s code never names them.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import sys
from dataclasses import dataclass


def threshold_arg(text: str) -> float | None:
    """argparse type for a score threshold: a number, or ``none`` / ``off`` for no threshold."""
    if text.lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"threshold must be a number or 'none', got {text!r}") from exc


@dataclass(frozen=True)
class Command:
    module: str
    function: str
    help: str


COMMANDS: dict[str, Command] = {
    "predict": Command("glee.inference.cli", "main", "detect, segment or ground objects in images, folders or videos"),
    "parity": Command("glee.parity", "main", "check against outputs recorded from the official GLEE code"),
    "track": Command("glee.video.cli", "main", "multi-object tracking and video segmentation"),
}


def _load_plugins() -> None:
    """Add the subcommands other installed packages declare in the ``glee.commands`` entry-point group."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="glee.commands"):
        if ep.name not in COMMANDS:
            module, _, function = ep.value.partition(":")
            summary = ep.extras[0] if ep.extras else f"provided by {module.split('.')[0]}"
            COMMANDS[ep.name] = Command(module.strip(), (function or "main").strip(), summary)


_load_plugins()


def register_command(name: str, module: str, function: str = "main", help: str = "") -> None:
    """Add or replace a subcommand (``module.function(argv) -> int``), imported lazily."""
    COMMANDS[name] = Command(module, function, help)


def _available(cmd: Command) -> bool:
    try:
        return importlib.util.find_spec(cmd.module) is not None
    except (ImportError, ValueError):  # a missing parent package
        return False


def usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: glee COMMAND [ARGS...]   (glee COMMAND --help for a command's options)", "", "commands:"]
    for name, cmd in COMMANDS.items():
        mark = "" if _available(cmd) else "  [not installed]"
        lines.append(f"  {name:<{width}}  {cmd.help}{mark}")
    return "\n".join(lines)


def load_command(name: str):  # noqa: ANN201 - returns the subcommand's main function
    """Import a subcommand's entry point; ``SystemExit`` with a clear message when it is unavailable."""
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise SystemExit(f"glee: unknown command '{name}'{hint}\n\n{usage()}")
    cmd = COMMANDS[name]
    try:
        module = importlib.import_module(cmd.module)
    except ModuleNotFoundError as exc:
        # only a missing command module (or its package) means "not installed"; anything else is a real bug
        if exc.name is None or not (cmd.module == exc.name or cmd.module.startswith(exc.name + ".")):
            raise
        raise SystemExit(
            f"glee {name}: not available in this installation (module '{cmd.module}' is missing). "
            f"It provides `{cmd.module}.{cmd.function}(argv)`; install the part of glee that ships it."
        ) from exc
    function = getattr(module, cmd.function, None)
    if function is None:
        raise SystemExit(f"glee {name}: module '{cmd.module}' has no entry point '{cmd.function}(argv)'")
    return function


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from glee import __version__

        print(f"glee {__version__}")
        return 0
    import glee  # noqa: F401  (installs the torchvision shim before any subcommand imports transformers)

    function = load_command(argv[0])
    return int(function(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
