"""The encoder as a torch network: backbones (dlib's ResNet, the students), the Siamese
encoder, safetensors checkpoints, and the export to ONNX with the CPU runtime choice. This is
where torch is needed; serving on the CPU (the int8 graph) never imports it."""
