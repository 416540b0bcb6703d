"""`distributor=plain`: the float32 model to every client, as TFF does by default."""

from __future__ import annotations

import tensorflow_federated as tff


class PlainBroadcast:
    """`tff.learning.templates.build_broadcast_process`: 32 bits a parameter a client."""

    def create(self, weights_type: tff.Type) -> tff.learning.templates.DistributionProcess:
        return tff.learning.templates.build_broadcast_process(weights_type)
