"""tf_bignas: BigNAS in TensorFlow/Keras 3."""
