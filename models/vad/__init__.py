"""The specialized model (SM): a compact VAD in plain PyTorch."""
