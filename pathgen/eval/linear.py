"""Linear probe on frozen features: standardised features into a multinomial logistic regression (sklearn)."""

import warnings

import numpy as np
import torch

CS = tuple(float(c) for c in np.logspace(-3, 2, 6))  # inverse L2 strengths tried by cross-validation


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    C: float | None = None,
    max_iter: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Fit on train, score on test: {"top1", "balanced_acc", "C", "cv_folds"}; accuracies are fractions.

    C=None picks the regularisation from CS by stratified k-fold CV on the training set (balanced accuracy,
    k = min(5, smallest class size)); with a class of a single sample there is nothing to cross-validate and
    C falls back to 1.0 (reported as cv_folds 0). Features are standardised inside the pipeline, so the
    CV folds never see statistics of their held-out part.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = train_x.float().numpy(), train_y.numpy()
    counts = np.unique(y, return_counts=True)[1]
    if len(counts) < 2:
        raise ValueError("a linear probe needs at least two classes in the training set")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0 if C is None else C, max_iter=max_iter))
    folds = 0
    with warnings.catch_warnings():
        # Tiny or separable sets make lbfgs hit max_iter or sklearn warn about small classes: expected here.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        if C is None and counts.min() >= 2:
            folds = int(min(5, counts.min()))
            search = GridSearchCV(
                probe,
                {"logisticregression__C": list(CS)},
                cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                scoring="balanced_accuracy",
            )
            probe = search.fit(x, y).best_estimator_
        else:
            probe.fit(x, y)
        y_pred = probe.predict(test_x.float().numpy())
        y_true = test_y.numpy()
        balanced = balanced_accuracy_score(y_true, y_pred)
    return {
        "top1": float((y_pred == y_true).mean()),
        "balanced_acc": float(balanced),
        "C": float(probe[-1].C),
        "cv_folds": folds,
    }
