"""The compression library: methods that encode a tensor on one side and decode it on the other.

Independent of TFF: a `Method` (method.py) is a dataclass of options that picks a
`Codec` (codec.py) for each tensor; a codec's `encode` emits the message, a dict
of tensors of static shape, and its `bits()` says exactly how many bits that is.
TFF's two interfaces adapt it: `federated_research.aggregators` sends client
updates through a method (uplink), `federated_research.distributors` the model
(downlink). One module per method; `conf/aggregator/<name>.yaml` makes it an option.
"""
