"""A Markdown reference of every ``prn`` command, generated from the Typer app itself.

The README embeds it between ``<!-- cli-reference:start -->`` and ``<!-- cli-reference:end -->``; a test
regenerates it and compares, so the README cannot drift from the code. Regenerate with
``python -m prn_model.cli.reference --write README.md``. It reads the joined app of :mod:`prn_model.cli`
(data and model commands), as the ``prn`` console command runs it.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Iterator

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from .app import app  # importing this package has registered every command on it

START = "<!-- cli-reference:start -->"
END = "<!-- cli-reference:end -->"


def _walk(cmd: TyperCommand | TyperGroup, path: list[str]) -> Iterator[tuple[list[str], TyperCommand]]:
    # Typer may bundle its own click, so test for the group's shape rather than click's classes.
    if hasattr(cmd, "commands"):
        for name in sorted(cmd.commands):
            yield from _walk(cmd.commands[name], path + [name])
    else:
        yield path, cmd


def _type_name(p: TyperOption | TyperArgument) -> str:
    """The annotated Python type of a parameter, e.g. ``str``, ``int``, ``Optional[int]`` → ``int``."""
    ann = getattr(getattr(p, "type_descriptor", None), "annotation", None)
    name = getattr(ann, "__name__", None) or str(ann or "value")
    return re.sub(r"(typing\.)?Optional\[(.*)\]", r"\2", name).replace("pathlib.", "")


def _param_row(p: TyperOption | TyperArgument) -> str:
    if p.param_type_name == "argument":
        name = f"`{(p.metavar or p.name).upper()}`"
        kind = "argument" + ("" if p.required else " (optional)")
        help_ = (getattr(p, "help", None) or "").replace("|", "\\|").replace("\n", " ")
    else:
        names = ", ".join(p.opts + p.secondary_opts)
        name = f"`{names}`"
        kind = "flag" if p.is_flag else _type_name(p)
        help_ = (p.help or "").replace("|", "\\|").replace("\n", " ")
        if p.required:
            kind += ", required"
        elif not p.is_flag and p.default not in (None, (), [], ""):
            kind += f", default `{p.default}`"
    return f"| {name} | {kind} | {help_} |"


def cli_reference() -> str:
    """The Markdown reference: one section per command with its summary, usage and parameters."""
    root = typer.main.get_command(app)
    out: list[str] = []
    for path, cmd in _walk(root, []):
        title = " ".join(["prn", *path])
        out.append(f"#### `{title}`")
        out.append("")
        doc = (cmd.help or "").strip().split("\n\n")[0].replace("\n", " ")
        if doc:
            out.append(doc)
            out.append("")
        params = [p for p in cmd.params if p.name != "help"]
        if params:
            out.append("| parameter | kind | meaning |")
            out.append("| --- | --- | --- |")
            out.extend(_param_row(p) for p in params)
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def embed(readme: str, reference: str) -> str:
    """Replace the block between the markers in ``readme`` with ``reference``."""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise ValueError("README has no cli-reference markers")
    return pattern.sub(lambda _: f"{START}\n{reference}{END}", readme)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", type=Path, help="README to update in place; without it, print the reference")
    args = ap.parse_args()
    ref = cli_reference()
    if args.write:
        args.write.write_text(embed(args.write.read_text(), ref))
    else:
        print(ref, end="")


if __name__ == "__main__":
    main()
