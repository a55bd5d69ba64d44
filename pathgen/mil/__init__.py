"""Slide-level multiple-instance learning on patch features: ABMIL, TransMIL, mean pooling; CV, metrics, heatmaps.

    result = train_mil("feats/features_dino", "labels.csv", "runs/mil", load_config(MILConfig, "configs/mil/x.yaml"))
    result["summary"]["auc"]  # {"mean", "std", "pooled", "ci95"}
"""


def __getattr__(name):
    # torch loads on first use, so that `pathgen --help` stays fast.
    if name == "train_mil":
        from pathgen.mil.train import train_mil

        return train_mil
    if name in ("predict_mil", "load_run_models"):
        from pathgen.mil import predict

        return getattr(predict, name)
    if name == "mil_heatmap":
        from pathgen.mil.heatmap import mil_heatmap

        return mil_heatmap
    if name == "MILConfig":
        from pathgen.mil.config import MILConfig

        return MILConfig
    raise AttributeError(f"module 'pathgen.mil' has no attribute {name!r}")


__all__ = ["MILConfig", "train_mil", "predict_mil", "load_run_models", "mil_heatmap"]
