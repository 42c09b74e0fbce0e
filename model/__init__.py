"""faceverify's offline side: the face pipeline, the Siamese encoder, training and evaluation.

`model/` never imports `app/`; the service reuses this package so that training, evaluation
and serving preprocess faces the same way.
"""
