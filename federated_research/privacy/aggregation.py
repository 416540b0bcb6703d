"""The TFF side of the privacy options: seeded Gaussian noise, the server-side clip of
decoded records, and the adapter from an unweighted private mean to a weighted factory.

Kept apart from the option dataclasses, which must load without TensorFlow.
"""

from __future__ import annotations

import collections

import dp_accounting
import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_privacy as tfp


class UnweightedMean(tff.aggregators.WeightedAggregationFactory):
    """A weighted factory that drops the weights on the clients (they are never sent):
    a DP mean counts clients, not examples, for every algorithm here."""

    def __init__(self, inner: tff.aggregators.UnweightedAggregationFactory) -> None:
        self.inner = inner

    def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
        process = self.inner.create(value_type)

        @tff.federated_computation(process.initialize.type_signature.result,
                                   tff.FederatedType(value_type, tff.CLIENTS),
                                   tff.FederatedType(weight_type, tff.CLIENTS))
        def next_fn(state, value, weight):
            del weight
            return process.next(state, value)

        return tff.templates.AggregationProcess(process.initialize, next_fn)


class SeededGaussianSumQuery(tfp.GaussianSumQuery):
    """TF Privacy's Gaussian sum query with noise drawn from a seed carried in its state.

    TF Privacy draws the noise with an unseeded op, so two runs of one config differed;
    here each round's noise comes from `tf.random.stateless_normal` under a seed split
    off the state's, which the next round carries on: same run seed, same noise."""

    _GlobalState = collections.namedtuple("_GlobalState", ["l2_norm_clip", "stddev", "seed"])

    def __init__(self, l2_norm_clip: float, stddev: float, seed: int, stream: int = 0) -> None:
        super().__init__(l2_norm_clip, stddev)
        self._seed = [seed, stream]  # one stream per query of a run

    def make_global_state(self, l2_norm_clip, stddev, seed=None):
        seed = self._seed if seed is None else seed
        return self._GlobalState(tf.cast(l2_norm_clip, tf.float32),
                                 tf.cast(stddev, tf.float32), tf.cast(seed, tf.int64))

    def initial_global_state(self):
        return self.make_global_state(self._l2_norm_clip, self._stddev)

    def get_noised_result(self, sample_state, global_state):
        leaves = tf.nest.flatten(sample_state)
        seeds = tf.random.experimental.stateless_split(global_state.seed, len(leaves) + 1)
        noised = [v + tf.cast(tf.random.stateless_normal(tf.shape(v), seed=s,
                                                         stddev=global_state.stddev), v.dtype)
                  for v, s in zip(leaves, tf.unstack(seeds)[1:], strict=True)]
        state = global_state._replace(seed=seeds[0])
        event = dp_accounting.GaussianDpEvent(global_state.stddev / global_state.l2_norm_clip)
        return tf.nest.pack_sequence_as(sample_state, noised), state, event


class SeededAdaptiveClipSumQuery(tfp.QuantileAdaptiveClipSumQuery):
    """TF Privacy's adaptive-clip query (Andrew et al. 2021) with both of its noises, the
    sum's and the clipped count's, drawn from seeds carried in its state."""

    def __init__(self, options, clients_per_round: int) -> None:
        """`options`: privacy.dp_adaptive.DpAdaptive."""
        value_noise = options.value_noise_multiplier(clients_per_round)
        count_stddev = options.count_stddev(clients_per_round)
        super().__init__(options.initial_clip, value_noise, options.target_quantile,
                         options.learning_rate, count_stddev, float(clients_per_round),
                         geometric_update=True)
        self._sum_query = SeededGaussianSumQuery(
            options.initial_clip, value_noise * options.initial_clip, options.seed, stream=0)
        self._quantile_estimator_query._below_estimate_query = tfp.NormalizedQuery(
            SeededGaussianSumQuery(0.5, count_stddev, options.seed, stream=1),
            denominator=float(clients_per_round))

    def get_noised_result(self, sample_state, global_state):
        noised, sum_state, sum_event = self._sum_query.get_noised_result(
            sample_state.sum_state, global_state.sum_state)
        clip, estimator_state, estimator_event = (
            self._quantile_estimator_query.get_noised_result(
                sample_state.quantile_estimator_state, global_state.quantile_estimator_state))
        clip = tf.maximum(clip, 0.0)
        sum_state = self._sum_query.make_global_state(  # the new clip, the same seed stream
            clip, clip * global_state.noise_multiplier, sum_state.seed)
        state = self._GlobalState(global_state.noise_multiplier, sum_state, estimator_state)
        return noised, state, dp_accounting.ComposedDpEvent([sum_event, estimator_event])


class TreeFactory(tff.aggregators.UnweightedAggregationFactory):
    """TFF's DP-FTRL tree aggregation, built once the update's type is known (TFF needs
    its tensor specs up front), its noise seeded."""

    def __init__(self, noise_multiplier: float, clients_per_round: int, clip: float,
                 efficient: bool, seed: int, record_factory) -> None:
        self.args = (noise_multiplier, float(clients_per_round), clip)
        self.efficient, self.seed, self.record_factory = efficient, seed, record_factory

    def create(self, value_type) -> tff.templates.AggregationProcess:
        from tensorflow_federated.python.core.impl.types import type_conversions

        specs = type_conversions.type_to_tf_tensor_specs(value_type)
        factory = tff.aggregators.DifferentiallyPrivateFactory.tree_aggregation(
            *self.args, record_specs=specs, noise_seed=self.seed,
            use_efficient=self.efficient, record_aggregation_factory=self.record_factory)
        return factory.create(value_type)


class DistributedDpFactory(tff.aggregators.UnweightedAggregationFactory):
    """TFF's distributed DP (DistributedDpSumFactory, in TFF's unweighted mean with a
    secure client count, and its secure adaptive zeroing), built once the update's size
    is known: a `target_epsilon` chooses the noise for that size. The built sum factory is
    left on the options (`options.built`) for the accountant to read."""

    def __init__(self, options, spec) -> None:
        self.options, self.spec = options, spec

    def create(self, value_type) -> tff.templates.AggregationProcess:
        from tensorflow_federated.python.aggregators.distributed_dp import (
            DistributedDpSumFactory,
        )
        from tensorflow_federated.python.learning.model_update_aggregator import (
            _default_zeroing,
        )

        options, n = self.options, self.spec.clients_per_round
        noise = options.noise_multiplier
        if options.target_epsilon is not None:
            noise = _calibrated_noise(options, self.spec, value_type)
        options.built = DistributedDpSumFactory(
            noise_multiplier=noise, expected_clients_per_round=n, bits=options.bits,
            l2_clip=options.clip, mechanism=f"distributed_{options.mechanism}",
            rotation_type=options.rotation, auto_l2_clip=options.auto_clip)
        factory = tff.aggregators.UnweightedMeanFactory(
            options.built, count_sum_factory=tff.aggregators.SecureSumFactory(
                upper_bound_threshold=1, lower_bound_threshold=0))
        if options.zeroing:
            factory = _default_zeroing(factory, secure_estimation=True)
        return factory.create(value_type)


def _calibrated_noise(options, spec, value_type) -> float:
    import math

    from tensorflow_federated.python.aggregators.distributed_dp import (
        _clip_prob_to_num_stddevs,
    )
    from tensorflow_federated.python.core.impl.types import type_conversions

    from federated_research.errors import ConfigError
    from federated_research.privacy.accounting import DdpRound, ddp_noise_for, default_delta
    from federated_research.privacy.base import count_stddev

    specs = tf.nest.flatten(type_conversions.type_to_tf_tensor_specs(value_type))
    dim = sum(int(s.shape.num_elements()) for s in specs)
    padded = 2 ** math.ceil(math.log2(dim)) if options.rotation == "hd" else math.ceil(dim / 2) * 2
    n = spec.clients_per_round
    ddp = DdpRound(options.clip, n, padded, 0.0, count_stddev(n) if options.auto_clip else None,
                   options.bits, float(_clip_prob_to_num_stddevs(1e-4)), 0.0,
                   f"distributed_{options.mechanism}")
    delta = default_delta(spec.population) if options.delta is None else options.delta
    try:
        noise = ddp_noise_for(options.target_epsilon, ddp, spec, delta)
    except ValueError:
        raise ConfigError(f"privacy.target_epsilon={options.target_epsilon}",
                          f"no noise multiplier up to 10,000 reaches it at {options.bits} "
                          f"bits for {padded:,} coordinates (the more noise, the coarser the "
                          "grid on a ring this small, and rounding inflates the sensitivity)",
                          "raise privacy.bits or privacy.target_epsilon") from None
    if options.auto_clip and noise >= 2 * count_stddev(n):
        raise ConfigError(f"privacy.target_epsilon={options.target_epsilon}",
                          f"it needs noise multiplier {noise:.3g}, and with auto_clip the clip "
                          f"count's noise allows at most {2 * count_stddev(n):g}",
                          "pass privacy.auto_clip=false, raise privacy.target_epsilon or "
                          "clients_per_round")
    return noise


def record_sum(method, clip: float) -> tff.aggregators.UnweightedAggregationFactory:
    """How the clipped records are summed: plainly, or through a compression method whose
    decoded records the server clips to `clip` again before adding them."""
    if method is None:
        return tff.aggregators.SumFactory()
    from federated_research.aggregators.codec_sum import CodecSumFactory

    return CodecSumFactory(method, clip=clip)
