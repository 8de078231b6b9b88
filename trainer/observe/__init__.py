"""What a run shows: the TensorBoard / Parquet run log and the pictures it holds. Imports
`trainer.core`; no Ray.
"""
