"""Converters that produce the shipped weights from public sources, each reproducible from a
package that installs here: dlib's face ResNet (dlib), YuNet (yunet), and the int8 graph of
any weights (quantize)."""
