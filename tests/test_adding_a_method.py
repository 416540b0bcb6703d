"""docs/how-to/add-a-method.md, followed to the letter in a copy of the project.

The page's titled code blocks (a module in federated_research/compression/ and a
YAML file in conf/aggregator/) are written into a temporary copy of the package
and its configs, and nothing else is touched. The copy must then run a round of
the new method from the command line with its bits exactly as declared, and the
suite's own tables (bit pinning, composition, the every-method preset) must pick
it up by themselves.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env

pytestmark = pytest.mark.slow  # a copy of the project, a CLI run, a pytest run

PAGE = REPO / "docs" / "how-to" / "add-a-method.md"
FENCE = re.compile(r'^```\w+ title="([^"]+)"\n(.*?)^```', re.M | re.S)


def titled_blocks(page: Path) -> dict[str, str]:
    """{path: code} for every fenced block of the page that names its file."""
    return {path: code for path, code in FENCE.findall(page.read_text())}


@pytest.fixture(scope="module")
def project_with_new_method(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("copy")
    for folder in ("federated_research", "conf", "tests"):
        shutil.copytree(REPO / folder, root / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    blocks = titled_blocks(PAGE)
    assert sorted(Path(p).parts[0] for p in blocks) == ["conf", "federated_research"]
    for path, code in blocks.items():
        assert not (root / path).exists(), f"the page's {path} would overwrite a file"
        (root / path).write_text(code)
    name = next(Path(p).stem for p in blocks if p.startswith("conf/aggregator/"))
    return root, name


def _env(root: Path) -> dict[str, str]:
    return {**cli_env(None), "PYTHONPATH": str(root)}


# One interpreter (its TensorFlow imports paid once) asks the copy's method for the bits
# it declares, writes them down, then runs a round from the command line as a user would.
DECLARE_THEN_TRAIN = """
import runpy, sys
from omegaconf import OmegaConf
from federated_research.compression.method import build_method
cfg = OmegaConf.load(f"conf/aggregator/{sys.argv[1]}.yaml")
cfg.seed = 0
with open("declared.txt", "w") as out:
    out.write(str(build_method(cfg, "aggregator").message_bits([(784, 10), (10,)])))
sys.argv = ["train", *sys.argv[2:]]
runpy.run_module("federated_research.train", run_name="__main__")
"""


def test_the_pages_method_runs_a_round_with_its_declared_bits(project_with_new_method):
    root, name = project_with_new_method
    out = subprocess.run(
        [sys.executable, "-c", DECLARE_THEN_TRAIN, name, f"aggregator={name}",
         "model=linear", "rounds=1", "clients_per_round=2", "eval_every=1",
         "tracking.progress_bar=false", "tracking.tensorboard=false", "tracking.save_model=false",
         "checkpoint_every=0", "hydra.run.dir=out",
         f"tracking.mlflow_uri=sqlite:///{root / 'mlflow.db'}"],
        cwd=root, env=_env(root), capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((root / "out" / "summary.json").read_text())
    per_client = int((root / "declared.txt").read_text()) + 32  # + the mean's float32 weight
    assert summary["comm/aggregated_bits"] == 2 * per_client
    assert per_client < 32 * 7850 + 32  # it compresses the linear model's 7,850 floats
    assert summary["comm/aggregated_bits_cumulative"] == 2 * per_client
    assert 0 < summary["eval/accuracy"] <= 1


def test_the_suites_tables_pick_the_method_up_by_themselves(project_with_new_method):
    root, name = project_with_new_method
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-o", "addopts=",
         "tests/test_compression.py", "tests/test_config.py",
         "-k", f"{name} or compression_vs_baseline"],
        cwd=root, env=_env(root), capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:]
    passed = {line.split("::")[1].split(" ")[0] for line in out.stdout.splitlines()
              if " PASSED" in line}
    assert f"test_counted_bits_are_what_the_encoder_emits[{name}-options" in " ".join(passed)
    assert f"test_every_option_composes_and_validates[aggregator-aggregator-{name}]" in passed
    assert "test_compression_vs_baseline_sweeps_every_aggregator_over_three_seeds" in passed
