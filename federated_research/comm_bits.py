"""Exact communication cost of a round, read off the TFF computations themselves.

Every value that crosses between server and clients in TFF goes through a
federated intrinsic whose argument has a static type, so the bits on the wire
are a property of the computation, not of a table we keep by hand:

  down (server -> each client): an intrinsic taking a SERVER value and returning
      CLIENTS values (`federated_broadcast`): the member type's size, per client.
  up (each client -> server): an intrinsic taking CLIENTS values and returning a
      SERVER value (`federated_aggregate`, `federated_sum`, `federated_mean`,
      `federated_weighted_mean`, `federated_secure_sum*`, `federated_min/max`):
      the size of the CLIENTS-placed member types, per client.

  size(type) = sum over its tensors of  num_elements x bits_per_element(dtype)

For a compressing aggregator the uploaded type is the *encoder's output* (for
TFF's 8-bit quantiser: the bit-packed int32 words plus the float32 min/max of
each quantised tensor), so the count is what the encoder really produces.

A round's cost is split by who sends it, measured on each part separately:
  * model traffic: the distributor's broadcast (model weights) and everything
    the model-update aggregator sends in both directions (the encoded update,
    the mean's weight, adaptive clipping/zeroing norm estimates). This is what
    `comm/broadcasted_bits` and `comm/aggregated_bits` report: what an
    aggregator or distributor changes.
  * control traffic: the rest of the whole `next` computation (the client
    learning rate broadcast, the training metrics upload), identical for every
    aggregator, reported as `comm/control_*_bits` so that totals stay exact.
Round totals multiply the per-client cost by the number of clients that round.

Secure aggregation sends integers in a modular ring, not the tensor's dtype: its
intrinsics are counted at the width they declare, per coordinate,

  federated_secure_modular_sum(v, m):    ceil(log2 m)
  federated_secure_sum_bitwidth(v, b):   b + ceil(log2 n)
  federated_secure_sum(v, M):            ceil(log2(M + 1)) + ceil(log2 n)

where n is the round's clients: the last two promise the exact sum, so the ring
must hold n summands of their width (what SecAgg's modulus is chosen from). The
key agreement and secret sharing of the SecAgg protocol itself are not counted.

Variable-length codes (QSGD's Elias codes, STC's Golomb-coded positions) are the
one thing a static type cannot size: a message's `varlen` entry is a buffer of
the worst-case size. It is left out here (a transfer that holds one is marked
`measured`), and the aggregation reports the bits its clients' codes really took
(`measured_bits`), which the loop adds to the round's comm/aggregated_bits:

  comm/aggregated_bits = clients x (fixed per-client bits) + sum of measured bits
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import tensorflow_federated as tff
from tensorflow_federated.python.common_libs import structure
from tensorflow_federated.python.core.impl.compiler import building_blocks
from tensorflow_federated.python.core.impl.types import computation_types, placements

# Intrinsics whose traffic depends on data chosen at run time: refuse rather than guess.
_UNCOUNTABLE = {"federated_select", "federated_secure_select"}
VARLEN = "varlen"  # compression/codec.py: a variable-length code, measured as written
# Secure sums: URI -> (per-coordinate width from the declared constant, grows with log2 n).
_SECURE = {
    "federated_secure_modular_sum": (lambda m: math.ceil(math.log2(m)), False),
    "federated_secure_sum_bitwidth": (lambda b: int(b), True),
    "federated_secure_sum": (lambda top: math.ceil(math.log2(top + 1)), True),
}


@dataclass(frozen=True)
class Transfer:
    """One intrinsic call: its direction, its URI, its type and bits per client."""

    direction: str  # "down" or "up"
    intrinsic: str
    type: str
    bits: int
    measured: bool = False  # it also carries a variable-length code, measured each round
    growing: int = 0  # coordinates of a secure sum whose width grows by ceil(log2 n)


@dataclass(frozen=True)
class CommCost:
    """Bits one client receives (down) and sends (up) in one call of a computation."""

    transfers: tuple[Transfer, ...] = ()
    down: int = field(init=False)
    up: int = field(init=False)
    up_growing: int = field(init=False)  # + this many x ceil(log2 n) bits (secure sums)

    def __post_init__(self) -> None:
        for direction in ("down", "up"):
            bits = sum(t.bits for t in self.transfers if t.direction == direction)
            object.__setattr__(self, direction, bits)
        object.__setattr__(self, "up_growing", sum(t.growing for t in self.transfers))

    def up_bits(self, num_clients: int) -> int:
        """Bits one client sends in a round of `num_clients` (secure sums grow with it)."""
        return self.up + self.up_growing * sum_growth(num_clients)

    def __add__(self, other: CommCost) -> CommCost:
        return CommCost(self.transfers + other.transfers)


def type_bits(type_spec: computation_types.Type) -> int:
    """Bits needed to send one value of `type_spec` (a federated type: its member)."""
    if isinstance(type_spec, computation_types.FederatedType):
        return type_bits(type_spec.member)
    if isinstance(type_spec, computation_types.StructType):
        return sum(type_bits(element) for name, element in structure.iter_elements(type_spec)
                   if name != VARLEN)
    if isinstance(type_spec, computation_types.TensorType):
        shape = type_spec.shape
        if shape is None or any(d is None for d in shape):
            raise ValueError(f"cannot count the bits of {type_spec}: its shape is not static")
        dtype = np.dtype(type_spec.dtype)
        if dtype.kind in "OSU":
            raise ValueError(f"cannot count the bits of {type_spec}: variable-length strings")
        return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize * 8
    raise ValueError(f"cannot count the bits of a value of type {type_spec}")


FederatedType = computation_types.FederatedType


def sum_growth(num_clients: int) -> int:
    """Extra bits a coordinate of an exact secure sum of `num_clients` values needs."""
    return math.ceil(math.log2(num_clients)) if num_clients > 1 else 0


def _tensor_leaves(type_spec: computation_types.Type) -> list[computation_types.TensorType]:
    if isinstance(type_spec, computation_types.FederatedType):
        return _tensor_leaves(type_spec.member)
    if isinstance(type_spec, computation_types.StructType):
        return [t for _, e in structure.iter_elements(type_spec) for t in _tensor_leaves(e)]
    return [type_spec]


def _constants(block: building_blocks.ComputationBuildingBlock, bound: dict) -> list:
    """The integers a secure sum's width argument holds (a literal, a struct of them, or
    a name bound to one in an enclosing block)."""
    if isinstance(block, building_blocks.Reference) and block.name in bound:
        return _constants(bound[block.name], bound)
    if isinstance(block, building_blocks.Literal):
        return [int(block.value)]
    if isinstance(block, building_blocks.Struct):
        return [c for child in block for c in _constants(child, bound)]
    raise ValueError(f"cannot read a secure sum's declared width from {block}")


def _secure_transfer(call: building_blocks.Call, bound: dict) -> Transfer:
    """A secure sum, counted at its declared modular width per coordinate."""
    uri = call.function.uri
    width_of, grows = _SECURE[uri]
    value, declared = call.argument[0], call.argument[1]
    leaves = _tensor_leaves(value.type_signature)
    widths = _constants(declared, bound)
    if len(widths) == 1:
        widths = widths * len(leaves)
    if len(widths) != len(leaves):
        raise ValueError(f"{uri}: {len(widths)} widths for {len(leaves)} tensors")
    sizes = [int(np.prod(t.shape, dtype=np.int64)) for t in leaves]
    bits = sum(n * width_of(w) for n, w in zip(sizes, widths, strict=True))
    return Transfer("up", uri, str(value.type_signature), bits,
                    growing=sum(sizes) if grows else 0)


def _federated_leaves(type_spec: computation_types.Type) -> Iterator[FederatedType]:
    if isinstance(type_spec, computation_types.FederatedType):
        yield type_spec
    elif isinstance(type_spec, computation_types.StructType):
        for _, element in structure.iter_elements(type_spec):
            yield from _federated_leaves(element)


def has_varlen(type_spec: computation_types.Type) -> bool:
    """Whether a value of this type holds a variable-length code (counted as measured)."""
    if isinstance(type_spec, computation_types.FederatedType):
        return has_varlen(type_spec.member)
    if isinstance(type_spec, computation_types.StructType):
        return any(name == VARLEN or has_varlen(element)
                   for name, element in structure.iter_elements(type_spec))
    return False


def _placed_at(type_spec: computation_types.Type, placement) -> list[FederatedType]:
    return [t for t in _federated_leaves(type_spec) if t.placement is placement]


def _transfer(call: building_blocks.Call, bound: dict) -> Transfer | None:
    uri = call.function.uri
    if uri in _UNCOUNTABLE:
        raise ValueError(f"{uri} sends data-dependent slices; its bits are not counted here")
    if uri in _SECURE:
        return _secure_transfer(call, bound)
    if call.argument is None:
        return None
    arg, result = call.argument.type_signature, call.type_signature
    if not isinstance(result, computation_types.FederatedType):
        return None
    if result.placement is placements.CLIENTS:
        sent = _placed_at(arg, placements.SERVER)
        direction = "down"
    elif result.placement is placements.SERVER:
        sent = _placed_at(arg, placements.CLIENTS)
        direction = "up"
    else:
        return None
    if not sent:
        return None  # e.g. federated_map / federated_apply: no placement change
    return Transfer(direction, uri, ", ".join(str(t) for t in sent),
                    sum(type_bits(t) for t in sent), any(has_varlen(t) for t in sent))


def comm_cost(computation: tff.Computation) -> CommCost:
    """Per-client bits of one invocation of a federated computation."""
    transfers: list[Transfer] = []
    bound: dict = {}  # every block's local names (secure sums' widths may be bound there)
    stack = [computation.to_building_block()]
    while stack:
        block = stack.pop()
        if isinstance(block, building_blocks.Block):
            bound.update(dict(block.locals))
        if isinstance(block, building_blocks.Call) and isinstance(
                block.function, building_blocks.Intrinsic):
            transfer = _transfer(block, bound)
            if transfer is not None:
                transfers.append(transfer)
        stack.extend(block.children())
    return CommCost(tuple(transfers))


@dataclass(frozen=True)
class RoundComm:
    """A round's per-client cost, split into model traffic and control traffic."""

    model: CommCost
    control_down: int
    control_up: int
    diagnostic: CommCost = field(default_factory=CommCost)
    control_up_growing: int = 0  # secure-summed control coordinates (see sum_growth)

    def round_metrics(self, num_clients: int) -> dict[str, int]:
        """Bits of one round with `num_clients` participants, as logged."""
        control_up = self.control_up + self.control_up_growing * sum_growth(num_clients)
        return {
            "comm/broadcasted_bits": num_clients * self.model.down,
            "comm/aggregated_bits": num_clients * self.model.up_bits(num_clients),
            "comm/control_broadcasted_bits": num_clients * self.control_down,
            "comm/control_aggregated_bits": num_clients * control_up,
        }

    def describe(self) -> dict:
        """Everything that was counted, for the run's comm_bits.json artifact."""
        return {
            "per_client_bits": {"model_down": self.model.down, "model_up": self.model.up,
                                "control_down": self.control_down,
                                "control_up": self.control_up,
                                "diagnostic_down": self.diagnostic.down,
                                "diagnostic_up": self.diagnostic.up,
                                "model_up_secure_coordinates": self.model.up_growing},
            "measured": {
                "model_up": any(t.measured for t in self.model.transfers
                                if t.direction == "up"),
                "model_down": any(t.measured for t in self.model.transfers
                                  if t.direction == "down"),
                "note": "per_client_bits are the fixed part of each message; where a "
                        "direction is measured, its variable-length codes' bits are "
                        "counted as written each round and added to its comm/* metric; "
                        "each secure-summed coordinate also takes ceil(log2 n) bits "
                        "more for a round of n clients"},
            "model_transfers": [t.__dict__ for t in self.model.transfers],
            "diagnostic_transfers": [t.__dict__ for t in self.diagnostic.transfers],
        }


def round_comm(process: tff.templates.IterativeProcess,
               *model_parts: tff.templates.MeasuredProcess,
               diagnostics: tuple[tff.templates.MeasuredProcess, ...] = ()) -> RoundComm:
    """Measure `process.next`, attributing to the model the traffic of `model_parts`
    (the distributor and the aggregation process the algorithm was built from).

    `diagnostics` are simulation-only measurements inside the process (the exact
    mean behind comm/update_mse): their traffic is neither model nor control."""
    total = comm_cost(process.next)
    model, diagnostic = CommCost(), CommCost()
    for part in model_parts:
        model = model + comm_cost(part.next)
    for part in diagnostics:
        diagnostic = diagnostic + comm_cost(part.next)
    control_down = total.down - model.down - diagnostic.down
    control_up = total.up - model.up - diagnostic.up
    if control_down < 0 or control_up < 0:
        raise ValueError("the model parts send more than the whole round: they are not "
                         "the parts this process was built from")
    growing = total.up_growing - model.up_growing - diagnostic.up_growing
    return RoundComm(model, control_down, control_up, diagnostic, growing)
