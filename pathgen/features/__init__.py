"""Per-patch features of patch stores (several encoders in one pass) and slide embeddings.

    extract_features(["dino=runs/ssl", "timm:vit_small_patch16_224"], ["patches/manifest.csv"], "features/")
    slide_embed("features/features_dino", "slides.h5")
"""


def __getattr__(name):
    # torch, timm and h5py load on first use, so that `pathgen --help` stays fast.
    if name in ("extract_features", "ExtractionResult", "FeatureRow"):
        from pathgen.features import extract

        return getattr(extract, name)
    if name in ("read_feature_file", "find_feature_files", "FeatureFile"):
        from pathgen.features import h5

        return getattr(h5, name)
    if name == "slide_embed":
        from pathgen.features.embed import slide_embed

        return slide_embed
    raise AttributeError(f"module 'pathgen.features' has no attribute {name!r}")


__all__ = ["extract_features", "ExtractionResult", "FeatureRow", "read_feature_file", "find_feature_files",
           "FeatureFile", "slide_embed"]
