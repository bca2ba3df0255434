"""The quality score: FD, precision and recall in the feature space of a shipped digits classifier.

Owns: the feature classifier and its features (`features.py`), distances between feature sets
(`distances.py`), scoring a generator, folder or data set (`evaluate.py`: `EvalOptions` and `evaluate`, what
`gan-deploy eval` runs),
and retraining the classifier (`classifier_training.py`, `python -m gan_deploy.quality`).
May import: core, data, nets, artifacts, backends (evaluate runs a generator through a runner).
"""
