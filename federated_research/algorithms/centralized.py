"""The centralised baseline: the same model trained on all training clients' data pooled.

Its runs sit in the same experiment and report the same metrics as federated
runs, so the price of federation (non-IID clients, few clients a round) reads
off the same table as the price of compression. A round is one pass
(`client.epochs` passes) over the pooled data, shuffled with a large buffer
(the pooled stream is ordered client by client), batched by the dataset's own
pipeline with `client.batch_size`, and stepped by `client_optimizer` - the same
training step as a FedAvg client (custom_fedavg.local_training), on one big
client. Nothing crosses a network: every comm/ bit metric is 0.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_federated as tff

from federated_research.algorithms import FederatedAlgorithm
from federated_research.algorithms.custom_fedavg import local_training
from federated_research.distributors import Distributor
from federated_research.distributors.plain import PlainBroadcast
from federated_research.errors import ConfigError
from federated_research.models import ModelSpec

ModelWeights = tff.learning.models.ModelWeights


class CentralizedProcess:
    """`initialize`, `next`, `get_model_weights`, `set_model_weights`, like a
    LearningProcess, run in this process with TensorFlow (no TFF worker needed).

    The state is the model's weights (numpy); `next(state, dataset)` trains one
    round on the pooled `dataset` and reports TFF-shaped metrics
    (`client_work/train/...`), so the loop logs them as `train/*`.
    """

    def __init__(self, model: ModelSpec, optimizer: tff.learning.optimizers.Optimizer) -> None:
        self._spec, self._optimizer = model, optimizer
        self._model: tff.learning.models.VariableModel | None = None
        self._finalize: tff.Computation | None = None

    def _variable_model(self) -> tff.learning.models.VariableModel:
        if self._model is None:  # built on first use, after TFF has traced its own copies
            self._model = self._spec.tff_model_fn()
        return self._model

    def initialize(self) -> ModelWeights:
        keras_model = self._spec.keras_fn()  # thrown away: see _variable_model
        return ModelWeights([v.numpy() for v in keras_model.trainable_weights],
                            [v.numpy() for v in keras_model.non_trainable_weights])

    def next(self, state: ModelWeights, dataset: tf.data.Dataset):
        model = self._variable_model()
        model.reset_metrics()
        initial = tf.nest.map_structure(tf.convert_to_tensor, state)  # one trace for all rounds
        delta, _, unfinalized = local_training(model, self._optimizer, initial, dataset)
        trainable = [w - d.numpy() for w, d in zip(state.trainable, delta, strict=True)]
        if self._finalize is None:
            self._finalize = _finalizer(model, unfinalized)
        # Unlike FedAvg's server, central training keeps what the forward passes updated
        # in non-trainable variables (e.g. batch-norm statistics of a keras_file model).
        non_trainable = [v.numpy() for v in ModelWeights.from_model(model).non_trainable]
        return tff.learning.templates.LearningProcessOutput(
            ModelWeights(trainable, non_trainable),
            {"client_work": {"train": self._finalize(unfinalized)}})

    @staticmethod
    def get_model_weights(state: ModelWeights) -> ModelWeights:
        return state

    @staticmethod
    def set_model_weights(state: ModelWeights, weights: ModelWeights) -> ModelWeights:
        del state
        return ModelWeights([*weights.trainable], [*weights.non_trainable])


def _finalizer(model: tff.learning.models.VariableModel, unfinalized) -> tff.Computation:
    """The model's metric finalizers as one TFF computation, as TFF's own metrics
    aggregators run them (they build Keras metrics, so they need a graph of their own)."""
    finalizers = model.metric_finalizers()
    value_type = tff.types.tensorflow_to_type(tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype), unfinalized))

    @tff.tensorflow.computation(value_type)
    def finalize(values):
        return {name: finalizer(values[name]) for name, finalizer in finalizers.items()}

    return finalize


def build_centralized(model: ModelSpec, client_optimizer: tff.learning.optimizers.Optimizer,
                      server_optimizer: tff.learning.optimizers.Optimizer,
                      aggregator: tff.aggregators.WeightedAggregationFactory,
                      distributor: Distributor | None = None,
                      shuffle_buffer: int = 10_000) -> FederatedAlgorithm:
    """Central training with `client_optimizer`; the server optimizer is not used."""
    del server_optimizer
    if type(aggregator) is not tff.aggregators.MeanFactory or not isinstance(
            distributor or PlainBroadcast(), PlainBroadcast):
        raise ConfigError("algorithm=centralized", "central training sends no update and no "
                          "model, so there is nothing to compress or clip",
                          "run it with aggregator=mean distributor=plain (the defaults) and "
                          "no client.update_clip_norm")
    return FederatedAlgorithm(process=CentralizedProcess(model, client_optimizer),
                              distributor=None, aggregation=None,
                              pooled_shuffle_buffer=shuffle_buffer)
