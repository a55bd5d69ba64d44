"""Training data: multi-crop augmentations and datasets over image folders and patch stores."""
