"""A fitted scikit-learn tree ensemble as plain numpy arrays: the same class probabilities, without scikit-learn.

Training fits scikit-learn's forest; ``Forest.from_sklearn`` copies out each tree's splits and leaf class
fractions, and ``predict_proba`` walks all trees at once with numpy, as scikit-learn does (features as
float32, ``x <= threshold`` goes left, a missing value goes where the tree learnt, the trees' probabilities
summed in order and averaged). The trained detector file then holds no scikit-learn object, so the service
that loads it never imports scikit-learn (nor scipy, which it pulls in).
"""

from __future__ import annotations

import numpy as np

_ROWS_PER_BLOCK = 4096  # rows walked together: bounds the (rows x trees) work arrays to a few MiB


class Forest:
    """The trees of a fitted classification forest, flattened: node arrays of every tree end to end.

    ``left``/``right``: child node of each node (a leaf points to itself); ``feature``/``threshold``: its split;
    ``missing_left``: where a missing value goes; ``roots``: each tree's first node; ``leaf``: row of
    ``proba`` (class fractions) for each leaf node, -1 for a split; ``depth``: the deepest path.
    """

    def __init__(self, classes, roots, left, right, feature, threshold, missing_left, leaf, proba, depth, n_features):
        self.classes_ = np.asarray(classes)
        self.roots = roots
        self.left = left
        self.right = right
        self.feature = feature
        self.threshold = threshold
        self.missing_left = missing_left
        self.leaf = leaf
        self.proba = proba
        self.depth = depth
        self.n_features_in_ = n_features

    @classmethod
    def from_sklearn(cls, forest) -> "Forest":
        """Copy a fitted single-output scikit-learn forest classifier (or one decision tree) into arrays."""
        trees = [e.tree_ for e in getattr(forest, "estimators_", [forest])]
        if any(t.n_outputs != 1 for t in trees):
            raise ValueError("only single-output classifiers can be exported")
        n_classes = len(forest.classes_)
        roots, left, right, feature, threshold, missing, leaf, proba = [], [], [], [], [], [], [], []
        offset = leaves = depth = 0
        for t in trees:
            n = t.node_count
            ids = np.arange(n)
            is_leaf = t.children_left[:n] < 0
            roots.append(offset)
            left.append(np.where(is_leaf, ids, t.children_left[:n]) + offset)
            right.append(np.where(is_leaf, ids, t.children_right[:n]) + offset)
            feature.append(np.where(is_leaf, 0, t.feature[:n]))
            threshold.append(np.where(is_leaf, 0.0, t.threshold[:n]))
            gone = getattr(t, "missing_go_to_left", None)
            missing.append(np.zeros(n, dtype=bool) if gone is None else np.asarray(gone[:n], dtype=bool))
            slot = np.full(n, -1)
            slot[is_leaf] = leaves + np.arange(int(is_leaf.sum()))
            leaf.append(slot)
            # what DecisionTreeClassifier.predict_proba returns for a row in that leaf
            proba.append(t.value[:n][is_leaf][:, 0, :n_classes])
            offset += n
            leaves += int(is_leaf.sum())
            depth = max(depth, int(t.max_depth))
        index = np.int32 if offset < 2**31 else np.int64
        return cls(
            forest.classes_, np.asarray(roots, dtype=index), np.concatenate(left).astype(index),
            np.concatenate(right).astype(index), np.concatenate(feature).astype(np.int32),
            np.concatenate(threshold).astype(np.float64), np.concatenate(missing), np.concatenate(leaf).astype(index),
            np.concatenate(proba).astype(np.float64), depth, int(forest.n_features_in_),
        )

    @property
    def n_trees(self) -> int:
        return len(self.roots)

    def apply(self, X: np.ndarray) -> np.ndarray:
        """The leaf node each row reaches in each tree, (rows, trees)."""
        # as scikit-learn: features compared as float32 (its trees' input type) against float64 thresholds
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected rows of {self.n_features_in_} features, got shape {X.shape}")
        children = np.stack([self.left, self.right], axis=1).ravel()  # node n's children at 2n (left), 2n+1
        is_leaf = self.leaf >= 0
        out = np.empty(len(X) * self.n_trees, dtype=self.left.dtype)
        for s in range(0, len(X), _ROWS_PER_BLOCK):
            block = X[s : s + _ROWS_PER_BLOCK]
            flat = block.ravel()
            missing = bool(np.isnan(block).any())
            # the (row, tree) pairs still walking: where each is, which output slot, where its row starts in ``flat``
            at = np.tile(self.roots, len(block))
            slot = np.arange(len(at)) + s * self.n_trees
            first = np.repeat(np.arange(len(block), dtype=at.dtype) * block.shape[1], self.n_trees)
            while len(at):
                x = flat[first + self.feature[at]]
                right = ~(x <= self.threshold[at])
                if missing:
                    right = np.where(np.isnan(x), ~self.missing_left[at], right)
                at = children[2 * at + right]
                done = is_leaf[at]
                # a leaf points to itself, so finished pairs may keep walking: set them aside only in bulk
                if done.all() or done.sum() * 8 > len(at):
                    out[slot[done]] = at[done]
                    walking = ~done
                    at, slot, first = at[walking], slot[walking], first[walking]
        return out.reshape(len(X), self.n_trees)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities per row (columns in ``classes_`` order): the trees' leaf fractions, averaged."""
        leaves = self.leaf[self.apply(X)]
        total = np.zeros((len(leaves), len(self.classes_)))
        for t in range(self.n_trees):  # summed tree by tree, in order, as scikit-learn does: the same floats
            total += self.proba[leaves[:, t]]
        total /= self.n_trees
        return total

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]
