"""Print the resolution, MACs, parameters and per-stage costs of a child.

    python -m tools.arch_info --arch=largest
    python -m tools.arch_info --arch=smallest --json
    python -m tools.arch_info --arch=child.json --space=bignas_mobilenetv2
    python -m tools.arch_info \
        --arch="256 1:2:2:2:4:4:1 32:16:24:48:88:128:216:352:1408 3:3:5:3:5:5:3"

`--arch` takes `largest`, `smallest`, a JSON arch file, JSON text, or the
paper's notation "RESOLUTION DEPTHS WIDTHS KERNELS". Costs come from the arch
alone (`tf_bignas.model.cost`), without building a model.
"""

from __future__ import annotations

import json

from absl import flags

from tf_bignas.model import cost as cost_lib
from tf_bignas.space import get_space, space_names
from tools import cli

_ARCH = flags.DEFINE_string("arch", "largest", "largest|smallest|FILE.json|JSON|paper notation.")
_SPACE = flags.DEFINE_enum("space", "bignas_mobilenetv2", list(space_names()), "Search space.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier outputs.", lower_bound=2)
_JSON = flags.DEFINE_boolean("json", False, "Print one JSON object instead of a table.")


def main(argv: list[str]) -> None:
    del argv
    space = get_space(_SPACE.value)
    arch = space.load_arch(_ARCH.value)
    c = cost_lib.cost(space, arch, _NUM_CLASSES.value)
    names = ["stem"] + [f"stage{i + 1}" for i in range(space.num_stages)] + ["head"]
    if _JSON.value:
        print(
            json.dumps(
                {
                    "space": space.name,
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
    print(f"space       {space.name}")
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
