"""PrivTune token importance, computed by a device on its own data (SPEC §2.3).

    w(t) = normalise( tfidf(t) · (1 − H(Y | t) / log|Y|) ) ∈ [0, 1]

* tfidf(t) = mean over the device's samples containing t of (count of t / sample length), times
  idf(t) = log((1 + N) / (1 + df(t))) + 1 (smoothed, as scikit-learn's TfidfTransformer);
* H(Y | t): entropy (nats) of the labels of the samples containing t, with add-one smoothing of the label
  counts [ours: a token seen once would otherwise look perfectly predictive];
* normalise: divide by the largest value, so the most important token has w = 1;
* special tokens and tokens the device never saw get w = 0 (the most noise).
"""

from __future__ import annotations

import numpy as np

from ..data.batching import TokenizedSplit


def token_importance(
    data: TokenizedSplit, vocab_size: int, special_ids: list[int] | set[int], num_labels: int | None = None
) -> np.ndarray:
    n_docs = len(data)
    labels = data.labels
    n_labels = int(num_labels or (labels.max() + 1 if len(labels) and labels.min() >= 0 else 1))
    df = np.zeros(vocab_size)
    tf_sum = np.zeros(vocab_size)
    label_counts = np.zeros((vocab_size, max(n_labels, 1)))
    for ids, label in zip(data.input_ids, labels):
        tokens, counts = np.unique(np.asarray(ids), return_counts=True)
        df[tokens] += 1
        tf_sum[tokens] += counts / len(ids)
        if n_labels > 1 and label >= 0:
            label_counts[tokens, label] += 1
    seen = df > 0
    idf = np.log((1 + n_docs) / (1 + df)) + 1
    tfidf = np.where(seen, tf_sum / np.maximum(df, 1), 0.0) * idf
    if n_labels > 1:
        p = (label_counts + 1) / (label_counts.sum(1, keepdims=True) + n_labels)
        certainty = 1 - (-(p * np.log(p)).sum(1)) / np.log(n_labels)
    else:
        certainty = np.ones(vocab_size)
    w = tfidf * certainty
    w[list(special_ids)] = 0.0
    w[~seen] = 0.0
    return w / w.max() if w.max() > 0 else w
