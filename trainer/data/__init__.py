"""dSprites as the trainer sees it: the factor grid, its images and the batch order.

Owns: rendering the grid (`render`), reading the official file (`npz`), the bit-packed Arrow
cache both are stored in (`cache`), and the `DSprites` view with its sampling rules
(`dsprites`). Imports numpy, pyarrow and the standard library only: no torch, no Ray.
"""
