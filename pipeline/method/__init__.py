"""The per-pair method: DINO backbone, generator, objective, augmentation, the training loop and the reference methods. Imports no Ray, fsspec or pandas."""
