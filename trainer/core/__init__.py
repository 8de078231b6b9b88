"""The method itself: model, losses, unary matrix, KL schedule, code agreement and the train
step. Pure functions of tensors; imports torch and numpy, never Ray or torch.distributed (codes
arrive through an injected chooser).
"""
