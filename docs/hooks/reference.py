"""The docs' generated pages: the settings table from ``service.config.Settings`` and the
command-line reference from the argparse parsers of ``fcn`` and ``fcn-serve``, rendered into
the pages that hold a marker (an MkDocs hook, ``mkdocs.yml``), plus the demo model's images."""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from model.cli import COMMANDS, build_parser
from service.cli import _argument_parser as serve_parser
from service.cli import _as_environment
from service.config import PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
# Files outside docs/ that pages show, by their URL in the site: the demo model's samples.
SAMPLES = ROOT / "models" / "demo" / "samples"
BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def cell(text: str) -> str:
    """``text`` as one Markdown table cell: pipes escaped, lines joined."""
    return " ".join(text.replace("|", "\\|").split())


def type_text(annotation: Any) -> str:
    """A setting's type as the environment spells it: ``png, overlay or json``, ``HxW list``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{value}`" for value in args)
    if origin in (typing.Union, types.UnionType):
        present = [arg for arg in args if arg is not type(None)]
        return " or ".join(type_text(arg) for arg in present) + " (optional)"
    if origin is tuple:
        inner = args[0]
        if typing.get_origin(inner) is tuple:
            return "`HxW` sizes, comma separated"
        return "names, comma separated" if inner is str else f"{type_text(inner)}s, comma separated"
    names = {bool: "`true` or `false`", int: "integer", float: "number", str: "text", Path: "path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def bounds_text(metadata: list[Any]) -> str:
    """A setting's bounds (``>= 0, <= 1``) from pydantic's ``Field(ge=..., le=...)``."""
    found = []
    for item in metadata:
        for attribute, sign in BOUNDS:
            value = getattr(item, attribute, None)
            if value is not None:
                found.append(f"{sign} {value}")
    return ", ".join(found)


def settings_rows() -> Iterator[tuple[str, str, str, str]]:
    """(variable, default, type and bounds, description) per setting, in ``Settings`` order."""
    for name, field in Settings.model_fields.items():
        default = "(required)" if field.is_required() else f"`{_as_environment(field.default)}`"
        kind = type_text(field.annotation)
        bounds = bounds_text(field.metadata)
        yield (
            f"{PREFIX}{name.upper()}",
            default,
            f"{kind}, {bounds}" if bounds else kind,
            field.description or "",
        )


def settings_table() -> str:
    """Every field of ``Settings`` as a Markdown table: variable, default, type, meaning."""
    lines = ["| variable | default | type | meaning |", "| --- | --- | --- | --- |"]
    for variable, default, kind, description in settings_rows():
        lines.append(f"| `{variable}` | {default} | {cell(kind)} | {cell(description)} |")
    return "\n".join(lines) + "\n"


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    """The parser's subcommands, if it has any."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _argument(action: argparse.Action) -> str:
    """How the command line writes ``action``: ``--out DIR``, ``--flip``, ``CHECKPOINT``."""
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    if action.nargs == 0:
        return ", ".join(f"`{option}`" for option in action.option_strings)
    metavar = action.metavar or (action.dest.upper() if not action.choices else None)
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    suffix = f" {metavar}" if metavar else ""
    return ", ".join(f"`{option}{suffix}`" for option in action.option_strings)


def _default(action: argparse.Action) -> str:
    """The value ``action`` takes when not given, or ``required``."""
    if action.required and action.option_strings:
        return "required"
    value = action.default
    if action.nargs == 0 or value is None or value is argparse.SUPPRESS:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(item) for item in value)
    return f"`{value}`"


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """``action``'s help with argparse's ``%(default)s``-style fields filled, and its choices."""
    text = action.help or ""
    if "%" in text:
        text = text % {**vars(action), "prog": parser.prog}
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        text += " (" + ", ".join(f"`{choice}`" for choice in action.choices) + ")"
    return text


def command_section(parser: argparse.ArgumentParser, depth: int = 2) -> list[str]:
    """A command's heading, description, usage and one table per group of its arguments;
    then its subcommands, a level deeper."""
    lines = [f"{'#' * depth} `{parser.prog}`", ""]
    if parser.description:
        lines += [parser.description, ""]
    lines += ["```text", parser.format_usage().strip(), "```", ""]
    for group in parser._action_groups:
        actions = [
            action
            for action in group._group_actions
            if action.help is not argparse.SUPPRESS
            and not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
        ]
        if not actions:
            continue
        lines += [f"**{group.title}**", "", "| argument | default | meaning |"]
        lines.append("| --- | --- | --- |")
        for action in actions:
            help_text = cell(_help(parser, action))
            lines.append(f"| {_argument(action)} | {_default(action)} | {help_text} |")
        lines.append("")
    subparsers = _subparsers(parser)
    if subparsers is not None:
        for sub in subparsers.choices.values():
            lines += command_section(sub, depth + 1)
    return lines


def fcn_commands() -> Iterator[argparse.ArgumentParser]:
    """``fcn``'s subcommand parsers, each built with its arguments (as ``fcn NAME --help``)."""
    for name in COMMANDS:
        subparsers = _subparsers(build_parser([name]))
        assert subparsers is not None
        yield subparsers.choices[name]


def cli_reference() -> str:
    """``fcn``'s subcommands (a table, then each in full) and ``fcn-serve``, in Markdown."""
    lines = ["## `fcn`", "", "| command | what it does |", "| --- | --- |"]
    for name, (_, help_text) in COMMANDS.items():
        lines.append(f"| [`fcn {name}`](#fcn-{name}) | {cell(help_text)} |")
    lines.append("")
    for parser in fcn_commands():
        lines += command_section(parser, depth=3)
    serve = serve_parser()
    serve.epilog = None  # the settings it lists are the settings page's table
    lines += command_section(serve)
    lines.append("Every `FCN_*` setting of `fcn-serve`: [Settings](../serving/settings.md).")
    return "\n".join(lines) + "\n"


# --- MkDocs hooks ----------------------------------------------------------------------------

# The pages write these markers (HTML comments: invisible on GitHub) where a table goes.
MARKERS = {"<!-- generated: settings -->": settings_table, "<!-- generated: cli -->": cli_reference}


def on_files(files: Any, config: Any) -> Any:
    """Add the demo model's sample images at ``samples/NAME``, as its model card links them."""
    from mkdocs.structure.files import File

    for path in sorted(SAMPLES.iterdir()):
        files.append(File.generated(config, f"samples/{path.name}", abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Render each marker the page holds into its generated table."""
    for marker, render in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown
