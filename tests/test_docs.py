"""The documentation: the site builds without warnings, its generated method table covers
every aggregator, the README stays short, and `--help` is the project's own."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = ("python3.11 scripts/bootstrap.py train", "python3.11 scripts/bootstrap.py test")
# The keys --help describes, each with its default (compared with conf/config.yaml).
HELP_KEYS = ("rounds", "clients_per_round", "seed", "eval_every", "eval_initial",
             "eval_batch_size", "client.epochs", "client.batch_size", "client.shuffle_buffer",
             "client.gradient_clip_norm", "client.update_clip_norm", "fed_eval.every",
             "fed_eval.clients", "client_optimizer.learning_rate",
             "server_optimizer.learning_rate", "client_state.store", "log_update_error",
             "checkpoint_every",
             "checkpoint_keep", "on_nonfinite", "resume")


def _stems(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


def test_site_builds_strict_with_generated_method_tables(tmp_path: Path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site / "index.html").is_file()
    methods = (site / "reference" / "methods" / "index.html").read_text(encoding="utf-8")
    assert "method-table:" not in methods, "a marker was left in place: the hook did not run"
    assert "schema_" not in methods, "an internal schema is shown as an option"
    for stem in _stems("aggregator") + _stems("distributor"):
        row = re.compile(rf"<tr>\s*<td><code>{re.escape(stem)}</code></td>")
        assert row.search(methods), f"no table row for {stem} in reference/methods"
    assert not (site / "hooks").exists(), "docs/hooks/ must not be published"


def test_readme_is_short_and_keeps_the_quickstart():
    readme = (REPO / "README.md").read_bytes()
    assert len(readme) <= 12_500, f"README.md is {len(readme):,} bytes"
    text = readme.decode("utf-8")
    for command in QUICKSTART:
        assert command in text
    assert "../shared" not in text


def _default(config: dict, key: str) -> str:
    value = config
    for part in key.split("."):
        value = value[part]
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def test_help_lists_groups_and_main_keys():
    done = subprocess.run([sys.executable, "-m", "federated_research.train", "--help"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    groups = dict(re.findall(r"^([\w/@]+): (.+)$", out, flags=re.MULTILINE))
    assert "aggregator" in groups, out
    listed = {option.strip() for option in groups["aggregator"].split(",")}
    assert {"drive", "mean"} <= listed
    assert set(_stems("aggregator")) <= listed
    assert "schema/" not in out, "internal schema groups are listed"
    config = yaml.safe_load((REPO / "conf" / "config.yaml").read_text(encoding="utf-8"))
    for key in HELP_KEYS:
        line = re.search(rf"^\s+{re.escape(key)}=(\S+)\s+\S", out, flags=re.MULTILINE)
        assert line, f"--help does not describe {key}"
        assert line.group(1) == _default(config, key), f"--help's default of {key}"
    assert "--cfg job" in out
    assert "docs/reference" in out
