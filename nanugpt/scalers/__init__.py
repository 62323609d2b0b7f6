"""Gradient scalers: what happens between backward and optimizer step (loss scaling for float16,
unscaling, clipping or normalising). `_partial_` factories called as
`instantiate(cfg.scaler)(device_type, float16=...)`; each is a torch.amp.GradScaler."""
