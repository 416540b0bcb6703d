"""MkDocs hook: tables of a config group's options, generated from conf/ at build time.

A line `<!-- method-table: aggregator -->` in a page is replaced by a Markdown table
with one row per YAML file in conf/aggregator/: the option (the file's stem), its
`_target_` (the last dotted name), its options (every key but `_target_` and
`defaults`, with its value) and a description (the file's leading comment lines).
Any group under conf/ works the same way (`<!-- method-table: distributor -->`,
`<!-- config-table: hydra/launcher -->`), so docs/reference/ never copies an option
list by hand.

The YAML is read with PyYAML alone: importing federated_research would import
TensorFlow. A marker naming a group without YAML files fails the build.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from mkdocs.exceptions import PluginError

MARKER = re.compile(r"^<!--\s*(?:method|config)-table:\s*([\w./-]+)\s*-->[ \t]*$", re.MULTILINE)
SKIPPED_KEYS = ("_target_", "defaults")
COMMANDS = ("python ", "python3", ".venv/bin/")  # comment lines that are example commands


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "-table:" not in markdown:
        return markdown
    conf_dir = Path(config.config_file_path).resolve().parent / "conf"
    return MARKER.sub(lambda match: group_table(conf_dir, match.group(1), page), markdown)


def group_table(conf_dir: Path, group: str, page=None) -> str:
    """The Markdown table of every option of `group` (conf/<group>/*.yaml)."""
    paths = sorted((conf_dir / group).glob("*.yaml"))
    if not paths:
        where = f" (in {page.file.src_path})" if page is not None else ""
        raise PluginError(f"method_table: no YAML files in {conf_dir / group}{where}")
    rows = ["| option | `_target_` | options | description |", "|---|---|---|---|"]
    for path in paths:
        text = path.read_text(encoding="utf-8")
        try:
            node = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise PluginError(f"method_table: cannot read {path}: {exc}") from exc
        if not isinstance(node, dict):
            raise PluginError(f"method_table: {path} is not a mapping")
        target = str(node.get("_target_", "")).rsplit(".", 1)[-1]
        options = _chosen(node.get("defaults") or [])
        options += [_code(f"{key}={_value(value)}") for key, value in _flat(node)
                    if key.split(".", 1)[0] not in SKIPPED_KEYS]
        rows.append("| " + " | ".join([
            f"`{path.stem}`",
            f"`{target}`" if target else "-",
            "<br>".join(options) if options else "-",
            _cell(leading_comment(text)) or "-",
        ]) + " |")
    # Blank lines around: the table is its own block; the div lets the site's CSS keep
    # option names whole (docs/stylesheets/extra.css).
    return '\n<div class="method-table" markdown>\n\n' + "\n".join(rows) + "\n\n</div>\n"


def leading_comment(text: str) -> str:
    """The comment lines at the top of a YAML file, joined into one paragraph.

    `@package` directives are left out; indented lines (commands) become code spans,
    a trailing backslash joining a command with its next line.
    """
    prose: list[str] = []
    command: list[str] = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line[1:]
        stripped = body.strip()
        if not stripped or stripped.startswith("@package"):
            continue
        if command or body.startswith("  ") or stripped.startswith(COMMANDS):  # an example
            command.append(stripped.rstrip("\\").strip())
            if not stripped.endswith("\\"):
                prose.append("`" + " ".join(command) + "`")
                command = []
            continue
        prose.append(stripped)
    if command:
        prose.append("`" + " ".join(command) + "`")
    return " ".join(prose)


def _chosen(defaults: list) -> list[str]:
    """What a defaults list picks for the user: `override /dataset: emnist` reads
    `dataset=emnist`, a preset it builds on reads `extends <name>`. Schemas
    (`/schema_<group>_<name>@_here_`) and `_self_` are plumbing and left out."""
    chosen = []
    for entry in defaults:
        if isinstance(entry, str):
            if entry != "_self_" and not entry.lstrip("/").startswith("schema_"):
                chosen.append(f"extends `{entry}`")
            continue
        if not isinstance(entry, dict):
            continue
        for key, option in entry.items():
            key = str(key)
            if key.startswith("override "):
                group = key.removeprefix("override ").strip().lstrip("/")
                chosen.append(_code(f"{group}={_value(option)}"))
    return chosen


def _flat(node: dict, prefix: str = ""):
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _flat(value, f"{name}.")
        else:
            yield name, value


def _value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{}"
    return str(value)


def _code(text: str) -> str:
    """Inline code that may wrap after a comma, and if long after a dot or `=`."""
    escaped = (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
               .replace("|", "&#124;"))
    breaks = ",.=" if len(text) > 30 else ","
    for mark in breaks:
        escaped = escaped.replace(mark, mark + "<wbr>")
    return f"<code>{escaped}</code>"


def _cell(text: str) -> str:
    """Escape what would break a table cell or read as markup, outside code spans."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # even parts are outside backticks
        parts[i] = (parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                    .replace("*", "\\*").replace("_", "\\_"))
    return "`".join(parts).replace("|", "\\|")
