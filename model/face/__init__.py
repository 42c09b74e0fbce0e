"""The face pipeline, shared by training, evaluation and serving: decode (imageio) → detect
(YuNet; MTCNN on request) → landmarks (dlib's 5 points) → chip (dlib's face chip) → the
encoder's input spec (preprocess). Torch-free: only MTCNN imports torch, when it is asked for.
"""
