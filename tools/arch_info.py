"""Print the resolution, MACs, parameters and per-stage costs of a child.

    python -m tools.arch_info --arch=largest
    python -m tools.arch_info --arch=smallest --json
    python -m tools.arch_info --arch=child.json --space=bignas_mobilenetv2
    python -m tools.arch_info \
        --arch="256 1:2:2:2:4:4:1 32:16:24:48:88:128:216:352:1408 3:3:5:3:5:5:3"
    python -m tools.arch_info --workdir=workdirs/quickstart --arch=largest

`--arch` takes `largest`, `smallest`, a JSON arch file, JSON text, or the
paper's notation "RESOLUTION DEPTHS WIDTHS KERNELS". Costs come from the arch
alone (`tf_bignas.model.cost`), without building a model. With `--workdir`,
the space (resolution overrides included), the number of classes and the
stage shortcuts are those of that training run (`open_workdir`), e.g. to
pick budgets for `pipelines.search`; `--space` and `--num_classes` then must
not disagree with it.
"""

from __future__ import annotations

import json

from absl import flags

from tf_bignas.model import cost as cost_lib
from tf_bignas.space import SearchSpace, get_space, space_names
from tools import cli

_ARCH = flags.DEFINE_string("arch", "largest", "largest|smallest|FILE.json|JSON|paper notation.")
_SPACE = flags.DEFINE_enum("space", "bignas_mobilenetv2", list(space_names()), "Search space.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier outputs.", lower_bound=2)
_JSON = flags.DEFINE_boolean("json", False, "Print one JSON object instead of a table.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "A training workdir: cost a child of its space, classes and shortcuts."
)


def _space_and_classes() -> tuple[SearchSpace, int, bool]:
    """(space, num_classes, stage_shortcuts) from --workdir or --space/--num_classes."""
    if not _WORKDIR.value:
        return get_space(_SPACE.value), _NUM_CLASSES.value, True
    from tf_bignas.run.workdir import open_workdir  # loads TensorFlow: only when asked

    wd = open_workdir(_WORKDIR.value, allow_unfinished=True)
    for name, theirs in (("space", wd.space.name), ("num_classes", wd.num_classes)):
        if flags.FLAGS[name].present and flags.FLAGS[name].value != theirs:
            raise ValueError(
                f"--{name}={flags.FLAGS[name].value} disagrees with --workdir={_WORKDIR.value} "
                f"({name} {theirs}); leave --{name} out"
            )
    return wd.space, wd.num_classes, wd.supernet.stage_shortcuts


def main(argv: list[str]) -> None:
    del argv
    space, num_classes, shortcuts = _space_and_classes()
    arch = space.load_arch(_ARCH.value)
    c = cost_lib.cost(space, arch, num_classes, shortcuts)
    names = ["stem"] + [f"stage{i + 1}" for i in range(space.num_stages)] + ["head"]
    if _JSON.value:
        print(
            json.dumps(
                {
                    "space": space.name,
                    "num_classes": num_classes,
                    "resolution": arch.resolution,
                    "macs": c.macs,
                    "params": c.params,
                    "paper_notation": arch.to_paper_notation(),
                    "arch": arch.to_dict(),
                    "stages": [
                        {"name": n, "macs": m, "params": p}
                        for n, m, p in zip(names, c.stage_macs, c.stage_params)
                    ],
                }
            )
        )
        return
    print(f"space       {space.name} ({num_classes} classes)")
    print(f"arch        {arch.to_paper_notation()}")
    print(f"resolution  {arch.resolution}")
    print(f"MACs        {c.macs / 1e6:.1f} M")
    print(f"params      {c.params / 1e6:.3f} M")
    print(
        f"{'part':8s} {'width':>6s} {'depth':>5s} {'kernels':>12s} {'MACs (M)':>10s} {'params':>10s}"
    )
    for i, n in enumerate(names):
        depth = str(arch.depths[i - 1]) if 0 < i <= space.num_stages else "-"
        kernels = ",".join(map(str, arch.kernels[i - 1])) if 0 < i <= space.num_stages else "-"
        print(
            f"{n:8s} {arch.widths[i]:6d} {depth:>5s} {kernels:>12s} "
            f"{c.stage_macs[i] / 1e6:10.2f} {c.stage_params[i]:10d}"
        )


if __name__ == "__main__":
    cli.run(main)
