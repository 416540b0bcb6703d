#!/usr/bin/env python3
"""Generate text with the character model of a finished run.

    .venv/bin/python scripts/generate_text.py --run outputs/2026-11-21/10-00-00
    .venv/bin/python scripts/generate_text.py --run <MLflow run id> --prompt "ROMEO: " \
        --length 300 --temperature 0.8 --seed 1

`--run` is a run's output folder (it holds model.keras), a Keras model file, or
an MLflow run id (its `model/model.keras` artifact is downloaded from
MLFLOW_TRACKING_URI, or `--mlflow-uri`). The same seed gives the same text.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True,
                        help="output folder, model file, or MLflow run id of a finished run")
    parser.add_argument("--prompt", default="ROMEO: ", help="text to start from")
    parser.add_argument("--length", type=int, default=200, help="characters to generate")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature (> 0; lower = likelier characters)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--mlflow-uri", default=os.environ.get(
        "MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlflow.db'}"),
        help="tracking store holding the run (default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    args = parser.parse_args()

    from federated_research import runtime
    from federated_research.errors import ConfigError
    from federated_research.text_generation import check_sampling, generate, load_run_model

    runtime.install_default_context(runtime.WorkerService())  # TFF's own would warn at exit

    try:
        check_sampling(args.length, args.temperature)
        model = load_run_model(args.run, args.mlflow_uri)
        print(generate(model, args.prompt, args.length, args.temperature, args.seed))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
