"""Globalization, the method compositions, the registry, ``minimize`` and the torch.optim adapter."""
