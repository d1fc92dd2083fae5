"""The children of a sandwich step: drawn in-graph from a stateless (seed, step) key.

`ChildSampler` draws the largest, the smallest and N random children of a
step as stacked int32 tensors (`Supernet.encode_arch`), the same on every
replica and host, in a compiled loop and eagerly (`SandwichStep` uses it;
`step.sample_children` decodes a draw into `ArchConfig`s).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tf_bignas.model.supernet import Supernet
from tf_bignas.space import ArchConfig


class ChildSampler:
    """Draws the children of a step from a stateless (seed, step) key, in-graph or eagerly.

    A step's children are the largest (at the largest training resolution),
    the smallest (at the smallest), then `num_random` children drawn
    uniformly per choice: every width, every stage depth, the kernel and
    expand ratio of every active layer, and the resolution, as
    `SearchSpace.sample` does. The draw is a pure function of (seed, step)
    (stateless Philox), so it is the same on every replica, host and device,
    in a compiled loop and eagerly.

    Args:
        net: The supernet (its space and layer plan).
        num_random: Random children per step.
    """

    def __init__(self, net: Supernet, num_random: int) -> None:
        space = net.space
        self.space, self.num_random = space, int(num_random)
        self.resolutions = tuple(sorted(space.train_resolutions))
        stages = space.stages
        blocks = net.max_plan.blocks
        self._blocks = [(b.stage, b.index) for b in blocks]
        widths = space.width_choices()
        self._widths = widths
        # Number of choices at each drawn position: widths, depths, kernels,
        # expand ratios (every supernet layer; inactive ones are padded), resolution.
        n_w = [len(c) for c in widths]
        n_d = [len(s.depths) for s in stages]
        n_k = [len(stages[s].kernels) for s, _ in self._blocks]
        n_e = [len(stages[s].expand_ratios) for s, _ in self._blocks]
        self._sizes = (len(n_w), len(n_d), len(n_k), len(n_e), 1)
        self._num_choices = np.asarray(n_w + n_d + n_k + n_e + [len(self.resolutions)], np.int64)
        max_w, max_e = max(n_w), max(n_e)
        self._max_w, self._max_e = max_w, max_e

        def table(rows: list[Sequence[int]], width: int) -> np.ndarray:
            return np.asarray([list(r) + [r[-1]] * (width - len(r)) for r in rows], np.int32)

        self._width_table = table(widths, max_w)
        self._depth_table = table([s.depths for s in stages], max(n_d))
        self._kernel_table = table([stages[s].kernels for s, _ in self._blocks], max(n_k))
        # A layer's input channels are the previous stage's width in the first
        # layer of a stage and its own stage's width after it.
        self._in_position = np.asarray([s if j == 0 else s + 1 for s, j in self._blocks], np.int32)
        # Expanded and squeeze-excite channels of every layer for every (input
        # width choice, expand choice), read off the supernet's own encoding of
        # full-depth children whose choices are all the k-th (clipped).
        mids = np.zeros((len(blocks), max_w, max_e), np.int32)
        ses = np.zeros((len(blocks), max_w), np.int32)
        for k in range(max_w):
            for m in range(max_e):
                arch = ArchConfig(
                    resolution=self.resolutions[0],
                    widths=tuple(c[min(k, len(c) - 1)] for c in widths),
                    depths=tuple(s.max_depth for s in stages),
                    kernels=tuple((s.max_kernel,) * s.max_depth for s in stages),
                    expand_ratios=tuple(
                        (s.expand_ratios[min(m, len(s.expand_ratios) - 1)],) * s.max_depth
                        for s in stages
                    ),
                )
                enc = net.encode_arch(arch)
                for layer, pos in enumerate(self._in_position):
                    kk = min(k, n_w[pos] - 1)
                    mm = min(m, n_e[layer] - 1)
                    mids[layer, kk, mm] = enc["mids"][layer]
                    ses[layer, kk] = enc["ses"][layer]
        self._mid_table, self._se_table = mids, ses
        largest, smallest = space.largest(), space.smallest()
        self._fixed = [largest, smallest]
        fixed = [net.encode_arch(a) for a in self._fixed]
        self._fixed_encoded = {k: np.stack([e[k] for e in fixed]) for k in fixed[0]}
        self._fixed_encoded["res_index"] = np.asarray(
            [self.resolutions.index(a.resolution) for a in self._fixed], np.int32
        )
        # Inactive layers carry the largest child's values (as `encode_arch` pads).
        self._pad = {k: fixed[0][k] for k in ("kernels", "mids", "ses")}

    @property
    def num_children(self) -> int:
        """Children per step: largest, smallest, and the random ones."""
        return 2 + self.num_random

    def choice_indices(self, seed: tf.Tensor | int, step: tf.Tensor | int) -> tf.Tensor:
        """The random children's choice indices: [num_random, positions] int32.

        Args:
            seed: The run's seed.
            step: The global step.

        Returns:
            Indices into the allowed values of each position (widths, depths,
            kernels, expand ratios, resolution).
        """
        key = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])
        raw = tf.random.stateless_uniform(
            [self.num_random, len(self._num_choices)],
            seed=key,
            minval=None,
            maxval=None,
            dtype=tf.int64,
            alg="philox",
        )
        return tf.cast(tf.math.floormod(raw, self._num_choices), tf.int32)

    def encode(self, seed: tf.Tensor | int, step: tf.Tensor | int) -> dict[str, tf.Tensor]:
        """The children of a step as stacked encodings (usable inside compiled code).

        Args:
            seed: The run's seed.
            step: The global step.

        Returns:
            `Supernet.encode_arch` arrays with a leading [num_children] axis,
            plus "res_index" ([num_children] int32).
        """
        fixed = {k: tf.constant(v) for k, v in self._fixed_encoded.items()}
        if not self.num_random:
            return fixed
        n_w, n_d, n_k, n_e, _ = self._sizes
        idx = self.choice_indices(seed, step)
        w_idx, d_idx, k_idx, e_idx, r_idx = tf.split(idx, list(self._sizes), axis=1)
        max_w, max_e = self._max_w, self._max_e
        widths = tf.gather(self._width_table.reshape(-1), w_idx + np.arange(n_w) * max_w)
        max_d = self._depth_table.shape[1]
        depths = tf.gather(self._depth_table.reshape(-1), d_idx + np.arange(n_d) * max_d)
        stage_of = np.asarray([s for s, _ in self._blocks], np.int32)
        index_of = np.asarray([j for _, j in self._blocks], np.int32)
        active = index_of < tf.gather(depths, stage_of, axis=1)
        max_k = self._kernel_table.shape[1]
        kernels = tf.gather(self._kernel_table.reshape(-1), k_idx + np.arange(n_k) * max_k)
        w_in = tf.gather(w_idx, self._in_position, axis=1)
        layer = np.arange(n_k)
        mids = tf.gather(self._mid_table.reshape(-1), (layer * max_w + w_in) * max_e + e_idx)
        ses = tf.gather(self._se_table.reshape(-1), layer * max_w + w_in)
        rand = {
            "widths": widths,
            "depths": depths,
            "kernels": tf.where(active, kernels, self._pad["kernels"]),
            "mids": tf.where(active, mids, self._pad["mids"]),
            "ses": tf.where(active, ses, self._pad["ses"]),
            "res_index": r_idx[:, 0],
        }
        return {k: tf.concat([fixed[k], tf.cast(rand[k], tf.int32)], 0) for k in fixed}

    def sample(self, seed: int, step: int) -> list[ArchConfig]:
        """The children of a step as ArchConfigs (eagerly; the same draw as `encode`).

        Args:
            seed: The run's seed.
            step: The global step.

        Returns:
            Largest, smallest, then the random children.
        """
        children = list(self._fixed)
        if not self.num_random:
            return children
        idx = self.choice_indices(seed, step).numpy()
        bounds = np.cumsum((0, *self._sizes))
        stages = self.space.stages
        for row in idx:
            w, d, k, e, r = (row[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
            depths = tuple(s.depths[i] for s, i in zip(stages, d))
            kernels, expands = [], []
            for s, stage in enumerate(stages):
                layers = [n for n, (bs, bj) in enumerate(self._blocks) if bs == s][: depths[s]]
                kernels.append(tuple(stage.kernels[k[n]] for n in layers))
                expands.append(tuple(stage.expand_ratios[e[n]] for n in layers))
            children.append(
                ArchConfig(
                    resolution=self.resolutions[r[0]],
                    widths=tuple(c[i] for c, i in zip(self._widths, w)),
                    depths=depths,
                    kernels=tuple(kernels),
                    expand_ratios=tuple(expands),
                )
            )
        return children
