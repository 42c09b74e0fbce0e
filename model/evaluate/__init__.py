"""Evaluation on LFW's protocols: `python -m model.evaluate --protocol view1|view2|identify|
impostors`. The protocols and the command line (protocols), LFW's files and identities (lfw),
verification and identification metrics (metrics), and the open-set impostor table and the
FPIR threshold rule that serving reads too (open_set). lfw, metrics and open_set are
numpy-only; protocols needs torch."""
