"""Multi-agent learning on ``torch.distributed``."""
