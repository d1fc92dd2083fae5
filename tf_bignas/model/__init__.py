"""Stage 2, the model: the weight-sharing supernet, its children, and their cost.

`netplan` turns an arch into the list of every operation of the child, with
names and shapes; the supernet's blocks (`supernet`, over the dynamic layers
of `layers`), the slicer (`slicing.extract_child`), the BN-channel map and the
cost model (`cost`) all read that one description. `bn_stats` stores each
child's calibrated BN statistics. `native` builds, checks and loads two CPU
gradient kernels (`native_kernels.cc`) that the layers use in training on a
CPU-only host, falling back to TensorFlow's ops where they do not build.

May import: `tf_bignas.common`, `tf_bignas.space`, TensorFlow and Keras.
"""

from tf_bignas.model.bn_stats import BNStats, BNStatsStore
from tf_bignas.model.supernet import Supernet

__all__ = ["BNStats", "BNStatsStore", "Supernet"]
