"""Build every part of a run from the composed config (shared by train.py and scripts)."""

from __future__ import annotations

import functools
import inspect

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from federated_research.aggregators import with_update_error
from federated_research.algorithms import initial_state
from federated_research.clipping import clip_gradients
from federated_research.config import too_few_clients, validate
from federated_research.data import build_dataset
from federated_research.distributors import build_distributor
from federated_research.errors import ConfigError
from federated_research.loop import LoopSpec, RunParts
from federated_research.models import build_model
from federated_research.privacy import PrivacySpec, build_uplink


def build_run_parts(cfg: DictConfig) -> RunParts:
    """Data, model, learning process (uplink aggregator, downlink distributor), bits."""
    validate(cfg)  # the same checks as the command line's, for scripts and tests too
    data = build_dataset(cfg.dataset, cfg.seed)
    if cfg.clients_per_round > data.num_clients:
        raise too_few_clients(cfg.clients_per_round, data.num_clients)
    model = build_model(cfg.model, data.input_shape, data.num_classes, data.task)
    participation = cfg.clients_per_round / data.num_clients  # EF21's and SCAFFOLD's share
    aggregator, accountant = build_uplink(cfg, participation, PrivacySpec(
        cfg.clients_per_round, data.num_clients, cfg.rounds, cfg.seed))
    if cfg.log_update_error:
        aggregator = with_update_error(aggregator)
    distributor = build_distributor(cfg.distributor)
    if hasattr(distributor, "bind"):  # federated dropout cuts the uplink to its sub-model too
        distributor, aggregator = distributor.bind(model, aggregator)
    builder = hydra.utils.instantiate(cfg.algorithm, _partial_=True)
    if "participation" in inspect.signature(builder.func).parameters:
        builder = functools.partial(builder, participation=participation)
    algorithm = builder(
        model=model, aggregator=aggregator,
        distributor=distributor,
        client_optimizer=clip_gradients(hydra.utils.instantiate(cfg.client_optimizer),
                                        cfg.client.gradient_clip_norm),
        server_optimizer=hydra.utils.instantiate(cfg.server_optimizer))
    comm = algorithm.round_comm()
    check_shardable(cfg, algorithm.process)
    spec = LoopSpec(rounds=cfg.rounds, clients_per_round=cfg.clients_per_round,
                    eval_every=cfg.eval_every, seed=cfg.seed, epochs=cfg.client.epochs,
                    batch_size=cfg.client.batch_size, shuffle_buffer=cfg.client.shuffle_buffer,
                    eval_initial=cfg.eval_initial, fed_eval_every=cfg.fed_eval.every,
                    stop_on_nonfinite=cfg.on_nonfinite == "stop",
                    examples_cache_bytes=cache_bytes(cfg))
    state = initial_state(algorithm.process, model, cfg.seed)
    return RunParts(data=data, model=model, algorithm=algorithm, comm=comm, spec=spec,
                    initial_state=state, privacy=accountant)


def cache_bytes(cfg: DictConfig) -> int | None:
    """`runtime.examples_cache_mib` in bytes (None: keep every client's examples)."""
    mib = cfg.runtime.get("examples_cache_mib")
    return None if mib is None else int(mib) * 2**20


def check_shardable(cfg: DictConfig, process) -> None:
    """Under `runtime=sharded`, a round must have a mergeable form: refused in one line
    before the first round when its aggregations depend on each other."""
    if not str(cfg.runtime.get("_target_", "")).endswith(".Sharded"):
        return
    from federated_research.runtime.sharding import NotMergeable, mergeable

    try:
        mergeable(process.next)
    except NotMergeable as exc:
        chosen = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
        parts = " ".join(f"{group}={chosen[group]}" for group in ("aggregator", "algorithm")
                         if group in chosen)
        raise ConfigError("runtime=sharded", f"a round of {parts or 'this run'} cannot be "
                          f"cut into shards: {exc}", "use runtime=local") from None
