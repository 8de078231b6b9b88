"""What a run shows and when: where log intervals end and which hooks run there (`cadence`),
the hooks (evaluation, pictures, log line), the TensorBoard / Parquet run log and the pictures
it holds. No Ray.
"""
