"""ednn_tf: Extensive Deep Neural Networks for TensorFlow / Keras 3."""
__version__ = "0.1.0"
