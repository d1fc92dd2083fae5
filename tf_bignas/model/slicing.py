"""Slice a child out of the supernet as a standalone Keras model of stock layers.

`extract_child(supernet, arch)` builds a functional `keras.Model` from the
child's `NetPlan` with only stock layers (Conv2D, DepthwiseConv2D,
BatchNormalization, Activation, pooling, Multiply, Add, Dropout, Dense), and
copies in the child's slice of the supernet's weights: the lowest-index
channels, the centre of each depthwise kernel, the first layers of each stage.
BN statistics come from the supernet's per-child store (calibrated statistics)
when the child is there, else from the BN moving variables as they are. The
result saves and loads as `.keras`, converts to TFLite, and gives the same
outputs as the supernet running that child with `training=False`.
"""

from __future__ import annotations

import keras
import numpy as np

from tf_bignas.model.bn_stats import BNStats
from tf_bignas.model.layers import keras_activation
from tf_bignas.model.netplan import net_plan
from tf_bignas.model.supernet import Supernet
from tf_bignas.space import ArchConfig


def _centre(kernel: np.ndarray, k: int) -> np.ndarray:
    start = (kernel.shape[0] - k) // 2
    return kernel[start : start + k, start : start + k]


def extract_child(
    supernet: Supernet,
    arch: ArchConfig,
    bn_stats: BNStats | None = None,
    fixed_resolution: bool = True,
    name: str | None = None,
) -> keras.Model:
    """Builds a child as a standalone Keras model with its weights copied in.

    Args:
        supernet: The trained supernet.
        arch: The child.
        bn_stats: BN statistics to use; by default the supernet's stored,
            calibrated statistics for this child, or else its current moving ones.
        fixed_resolution: Build with input shape (R, R, 3) (needed for MAC
            counting and fixed-shape TFLite); else (None, None, 3).
        name: Model name (default "child").

    Returns:
        The child model, producing logits.

    Raises:
        InvalidArchError: If the arch is not in the supernet's space.
    """
    space = supernet.space
    space.validate(arch)
    plan = net_plan(space, arch, supernet.num_classes, supernet.stage_shortcuts)
    if bn_stats is None:
        bn_stats = (
            supernet.bn_stats.get(arch)
            if arch in supernet.bn_stats
            else supernet.current_bn_stats(arch)
        )
    eps = supernet.bn_epsilon
    bn_layers = supernet.bn_layers()
    weights: dict[str, list[np.ndarray]] = {}

    def conv(x, filters: int, kernel: int, stride: int, name: str, bias: bool = False, src=None):
        layer = keras.layers.Conv2D(
            filters, kernel, strides=stride, padding="same", use_bias=bias, name=name
        )
        cin = x.shape[-1]
        w = [src.kernel.numpy()[:, :, :cin, :filters]]
        if bias:
            w.append(src.bias.numpy()[:filters])
        weights[name] = w
        return layer(x)

    def bn(x, name: str):
        src = bn_layers[name]
        c = x.shape[-1]
        mean, var = bn_stats[name]
        weights[name] = [src.gamma.numpy()[:c], src.beta.numpy()[:c], mean, var]
        return keras.layers.BatchNormalization(epsilon=eps, name=name)(x)

    def act(x, kind: str, name: str):
        return keras.layers.Activation(keras_activation(kind), name=name)(x)

    shape = (arch.resolution, arch.resolution, 3) if fixed_resolution else (None, None, 3)
    inputs = keras.Input(shape, name="image")
    x = conv(inputs, plan.stem_ch, plan.stem_kernel, plan.stem_stride, "stem_conv",
             src=supernet.stem_conv)  # fmt: skip
    x = act(bn(x, "stem_bn"), plan.activation, "stem_act")
    blocks = {blk.plan.name: blk for blk in supernet.blocks}
    for b in plan.blocks:
        src = blocks[b.name]
        n = b.name
        h = x
        if b.expand:
            h = conv(h, b.mid_ch, 1, 1, f"{n}_expand_conv", src=src.expand_conv)
            h = act(bn(h, f"{n}_expand_bn"), b.activation, f"{n}_expand_act")
        dw_name = f"{n}_dw_conv"
        weights[dw_name] = [_centre(src.dw_conv.kernel.numpy(), b.kernel)[:, :, : b.mid_ch, :]]
        h = keras.layers.DepthwiseConv2D(
            b.kernel, strides=b.stride, padding="same", use_bias=False, name=dw_name
        )(h)
        h = act(bn(h, f"{n}_dw_bn"), b.activation, f"{n}_dw_act")
        if b.se_ch:
            s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{n}_se_pool")(h)
            s = conv(s, b.se_ch, 1, 1, f"{n}_se_reduce", bias=True, src=src.se_reduce)
            s = act(s, b.activation, f"{n}_se_act")
            s = conv(s, b.mid_ch, 1, 1, f"{n}_se_expand", bias=True, src=src.se_expand)
            s = keras.layers.Activation("sigmoid", name=f"{n}_se_gate")(s)
            h = keras.layers.Multiply(name=f"{n}_se_excite")([h, s])
        h = conv(h, b.out_ch, 1, 1, f"{n}_project_conv", src=src.project_conv)
        h = bn(h, f"{n}_project_bn")
        if b.residual:
            shortcut = x
            if b.shortcut_pool:
                shortcut = keras.layers.AveragePooling2D(
                    2, strides=2, padding="same", name=f"{n}_shortcut_pool"
                )(shortcut)
            if b.shortcut_conv:
                shortcut = conv(shortcut, b.out_ch, 1, 1, f"{n}_shortcut_conv",
                                src=src.shortcut_conv)  # fmt: skip
                shortcut = bn(shortcut, f"{n}_shortcut_bn")
            h = keras.layers.Add(name=f"{n}_add")([shortcut, h])
        x = h
    x = conv(x, plan.head_ch, 1, 1, "head_conv", src=supernet.head_conv)
    x = act(bn(x, "head_bn"), plan.activation, "head_act")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if supernet.dropout_rate > 0:
        x = keras.layers.Dropout(supernet.dropout_rate, name="dropout")(x)
    head = supernet.classifier
    weights["classifier"] = [head.kernel.numpy()[: plan.head_ch], head.bias.numpy()]
    outputs = keras.layers.Dense(supernet.num_classes, name="classifier")(x)
    model = keras.Model(inputs, outputs, name=name or "child")
    for layer_name, values in weights.items():
        model.get_layer(layer_name).set_weights(values)
    return model
