"""Build every part of a run from the composed config (shared by train.py and scripts)."""

from __future__ import annotations

from dataclasses import dataclass

import hydra
from omegaconf import DictConfig

from federated_research.aggregators.comm_bits import RoundComm
from federated_research.algorithms import FederatedAlgorithm
from federated_research.data.federated_data import FederatedData
from federated_research.errors import ConfigError
from federated_research.loop import LoopSpec
from federated_research.models import ModelSpec


@dataclass(frozen=True)
class RunParts:
    """What the round loop needs, built once per run."""

    data: FederatedData
    model: ModelSpec
    algorithm: FederatedAlgorithm
    comm: RoundComm
    spec: LoopSpec
    initial_state: object


def build_run_parts(cfg: DictConfig) -> RunParts:
    """Data, model, learning process (uplink aggregator, downlink distributor), bits."""
    from federated_research.aggregators import build_aggregator, with_update_error
    from federated_research.algorithms import initial_state
    from federated_research.clipping import clip_gradients, clip_updates
    from federated_research.data import build_dataset
    from federated_research.distributors import build_distributor
    from federated_research.models import build_model

    data = build_dataset(cfg.dataset, cfg.seed)
    if cfg.clients_per_round > data.num_clients:
        raise ConfigError(f"clients_per_round={cfg.clients_per_round}",
                          f"the dataset has only {data.num_clients} training clients",
                          f"pass clients_per_round={data.num_clients} or fewer")
    model = build_model(cfg.model, data.input_shape, data.num_classes, data.task)
    aggregator = clip_updates(build_aggregator(cfg.aggregator), cfg.client.update_clip_norm)
    if cfg.log_update_error:
        aggregator = with_update_error(aggregator)
    algorithm = hydra.utils.instantiate(cfg.algorithm, _partial_=True)(
        model=model, aggregator=aggregator,
        distributor=build_distributor(cfg.distributor),
        client_optimizer=clip_gradients(hydra.utils.instantiate(cfg.client_optimizer),
                                        cfg.client.gradient_clip_norm),
        server_optimizer=hydra.utils.instantiate(cfg.server_optimizer))
    comm = algorithm.round_comm()
    spec = LoopSpec(cfg.rounds, cfg.clients_per_round, cfg.eval_every, cfg.seed,
                    cfg.client.epochs, cfg.client.batch_size, cfg.client.shuffle_buffer,
                    cfg.eval_initial, cfg.fed_eval.every, cfg.on_nonfinite == "stop")
    state = initial_state(algorithm.process, model, cfg.seed)
    return RunParts(data, model, algorithm, comm, spec, state)
