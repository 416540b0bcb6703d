"""`hydra/sweeper=arms`: Hydra's basic sweeper, over a list of arms times its grid.

A comparison is rarely a grid: error feedback (ef14, ef21) applies to compressors and
not to the uncompressed `mean` it is compared with, and top-k is tried at two
fractions. An arm is one configuration, written as overrides in one string
("aggregator=topk aggregator.fraction=0.01"); every arm is run with every point of
the usual grid (`hydra.sweeper.params` and the command line's `a=x,y`, e.g. seeds).
An arm `group=*` stands for every option of the group that no other arm picks, each at
its own defaults: a preset that names its budgets for some methods still sweeps a
method added later. Jobs, launchers, the parent MLflow run and the report are those of any multirun.
"""

from __future__ import annotations

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


def _key(override: str) -> str:
    """`+a.b=1` -> `a.b`: the key an override sets, whatever its prefix."""
    return override.split("=", 1)[0].lstrip("+~")


def expand(arms: list[list[str]]) -> list[list[str]]:
    """Each `group=*` arm as one arm per option of the group that no other arm picks."""
    from federated_research.config import all_options

    picked: dict[str, set[str]] = {}
    for arm in arms:
        for override in arm:
            picked.setdefault(_key(override), set()).add(override.split("=", 1)[-1])
    expanded = []
    for arm in arms:
        wild = [o for o in arm if o.endswith("=*")]
        if len(wild) > 1:
            raise ValueError(f"hydra.sweeper.arms: {' '.join(arm)}: one `group=*` an arm")
        if not wild:
            expanded.append(arm)
            continue
        group = _key(wild[0])
        names = all_options(group.split("@")[0]).split(",") if "@" not in group else []
        if names == [""] or not names:
            raise ValueError(f"hydra.sweeper.arms: {wild[0]}: {group} is not a config group "
                             "whose options can be listed")
        rest = [o for o in arm if o is not wild[0]]
        expanded += [[f"{group}={name}", *rest] for name in names
                     if name not in picked.get(group, set())]
    return expanded


class ArmsSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict | None = None,
                 arms: list[str] | None = None) -> None:
        super().__init__(max_batch_size, params)
        self.arms = expand([str(arm).split() for arm in arms or []])

    def split_arguments(self, overrides, max_batch_size):  # the basic sweeper calls this
        # The sweeper's params come first, the command line after: a key given on the
        # command line replaces the preset's values (`seed=0` narrows `seed: 0,1,2`)
        # instead of being crossed with them.
        last = {o.get_key_element(): o for o in overrides}
        overrides = [o for o in overrides if last[o.get_key_element()] is o]
        grid = BasicSweeper.split_arguments(overrides, None)[0]
        jobs = []
        for arm in self.arms or [[]]:  # an arm's own value of a key wins over the grid's
            mine = {_key(o) for o in arm}
            jobs += [[*[o for o in point if _key(o) not in mine], *arm] for point in grid]
        return [jobs] if max_batch_size is None else list(
            BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size))
