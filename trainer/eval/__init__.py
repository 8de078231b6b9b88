"""Disentanglement metrics of a trained model on a dataset. Imports `trainer.core` and
`trainer.data`; no Ray.
"""
