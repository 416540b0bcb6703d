"""Text from a trained character model: a prompt, then one sampled character at a time.

As in TFF's text-generation tutorial, the model is turned into a stateful copy
that takes one character per call and keeps the GRU state in between, so
generating n characters costs n steps rather than n full sequences.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from federated_research.data.shakespeare import BOS, CHAR_VOCAB, decode, encode
from federated_research.errors import ConfigError
from federated_research.models import outputs_logits
from federated_research.models.keras_file import MODEL_FILE, load, rebuild
from federated_research.tracking.mlflow_sink import check_reachable, store_call


def load_run_model(run: str, mlflow_uri: str) -> tf.keras.Model:
    """The trained model of a finished run: its output dir (or a model file), or the
    `model/model.keras` artifact of the MLflow run with that id."""
    if Path(run).expanduser().exists():
        return load(run, key="--run")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    check_reachable(mlflow_uri)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one small file: no bar
    with store_call():
        client = MlflowClient(tracking_uri=mlflow_uri)
        try:
            client.get_run(run)
        except MlflowException:
            raise ConfigError(f"--run={run}", f"neither a folder nor a run of {mlflow_uri}",
                              "pass a run's output folder, or the id of a run in that store "
                              "(set MLFLOW_TRACKING_URI or --mlflow-uri)") from None
        folder = tempfile.mkdtemp(prefix="federated_research_model_")
        try:
            path = client.download_artifacts(run, f"model/{MODEL_FILE}", folder)
        except (MlflowException, OSError):
            raise ConfigError(f"--run={run}", "the run has no model/model.keras artifact",
                              "pick a run trained with tracking.save_model=true") from None
    return load(path, key="--run")


def check_sampling(length: int, temperature: float) -> None:
    if temperature <= 0:
        raise ConfigError(f"--temperature={temperature}", "must be positive",
                          "pass e.g. --temperature 0.8")
    if length < 0:
        raise ConfigError(f"--length={length}", "must be 0 or more", "pass e.g. --length 200")


def generate(model: tf.keras.Model, prompt: str, length: int = 200, temperature: float = 1.0,
             seed: int = 0) -> str:
    """`prompt` followed by `length` sampled characters; the same for the same seed.

    Only real characters are sampled (padding, out-of-vocabulary and the
    beginning/end tokens are never drawn). Lower temperatures give likelier,
    more repetitive text; higher ones more surprising text.
    """
    check_sampling(length, temperature)
    step = rebuild(model, stateful=True, batch_size=1)
    step.reset_states()
    logits_out = outputs_logits(model)
    real = np.arange(1, len(CHAR_VOCAB) + 1)  # ids of the vocabulary's characters
    rng = np.random.default_rng(seed)
    ids = np.concatenate([[BOS], encode(prompt)]).astype(np.int64)
    out = step(ids[None, :], training=False)[0, -1].numpy()
    generated = []
    for _ in range(length):
        scores = out if logits_out else np.log(np.maximum(out, 1e-30))
        scores = scores[real].astype(np.float64) / temperature
        probs = np.exp(scores - scores.max())
        next_id = int(rng.choice(real, p=probs / probs.sum()))
        generated.append(next_id)
        out = step(np.array([[next_id]], np.int64), training=False)[0, -1].numpy()
    return prompt + decode(generated)
